"""`af2cpu slurm script FASTA --out DIR`: a ready sbatch script that folds a FASTA file as a job array.

Each array task runs `af2cpu predict FASTA --out DIR <overrides>`; predict reads SLURM_ARRAY_TASK_ID
and SLURM_ARRAY_TASK_COUNT and folds only its shard of the targets, all tasks writing into the same
output folder and stage cache. CPUs and memory per task come from the options, or from the memory
planner's estimate for the longest target plus headroom for the searches, relaxation and the Dask
processes (af2cpu.scheduler.slurm). `--summary-job` adds a job that runs `af2cpu report DIR` once
every array task succeeded (`afterok`); `--submit` submits with sbatch and prints the job id(s).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from af2cpu.io import atomic_write_text
from af2cpu.layout import BatchDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)
    script = sub.add_parser("script", help="write (and optionally submit) an sbatch array script",
                            description=__doc__.strip())
    script.add_argument("fasta", help="FASTA file with the targets")
    script.add_argument("--out", required=True, help="output folder shared by every array task")
    script.add_argument("--array-count", type=int, metavar="N", help="array tasks (default: one per target)")
    script.add_argument("--cpus-per-task", type=int, metavar="C", help="CPUs per array task (default 4)")
    script.add_argument("--mem", metavar="M", help="memory per task, e.g. 16G (default: from the planner)")
    script.add_argument("--time", metavar="T", help="time limit per task, e.g. 12:00:00")
    script.add_argument("--partition", metavar="P", help="SLURM partition")
    script.add_argument("--account", metavar="A", help="SLURM account")
    script.add_argument("--script", metavar="PATH",
                        help=f"where to write the script (default: OUT/{BatchDir('OUT').array_script.name})")
    script.add_argument("--summary-job", action="store_true",
                        help="also a job that runs `af2cpu report OUT` after every array task succeeded")
    script.add_argument("--submit", action="store_true", help="submit with sbatch and print the job id(s)")
    script.add_argument("overrides", nargs="*", help="Hydra overrides passed to af2cpu predict")


def run(args: argparse.Namespace) -> int:
    # deferred: planning reads the stages, which import the model and preprocessing packages
    from af2cpu.scheduler.slurm import array_script, plan_job, require_sbatch, sbatch, summary_script

    job = plan_job(args.fasta, args.out, args.overrides or [], args.array_count, args.cpus_per_task, args.mem,
                   args.time, args.partition, args.account)
    if args.submit:
        require_sbatch()  # before anything is written
    batch = BatchDir(job.out_dir)
    batch.prepare()
    job.log_dir.mkdir(exist_ok=True)
    path = Path(args.script) if args.script else batch.array_script
    atomic_write_text(path, array_script(job))
    path.chmod(0o755)
    print(f"wrote {path}: {job.array_count} array task(s), {job.cpus_per_task} CPU(s) and {job.mem} each")
    summary_path = path.with_name(path.stem + "_report.sbatch")
    if args.summary_job:
        atomic_write_text(summary_path, summary_script(job))
        print(f"wrote {summary_path}: `af2cpu report` after the array succeeded")
    if args.submit:
        job_id = sbatch([str(path)])
        print(f"submitted array job {job_id}")
        if args.summary_job:
            report_id = sbatch([f"--dependency=afterok:{job_id}", str(summary_path)])
            print(f"submitted report job {report_id}")
    return 0
