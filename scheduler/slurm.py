"""SLURM job arrays: the sbatch script that folds a FASTA file as a job array (`af2cpu slurm script`).

Each array task runs `af2cpu predict FASTA --out DIR <overrides>`; predict reads SLURM_ARRAY_TASK_ID
and SLURM_ARRAY_TASK_COUNT and folds only its shard of the targets (af2cpu.scheduler.sharding), all
tasks writing into the same output folder and stage cache. CPUs and memory per task come from the
options, or from the largest memory estimate among the declared stages of each target
(af2cpu.scheduler.stages: the memory planner's peak for each model at its preset's largest inputs; a
complex's multimer presets on all its chains together) plus headroom for the searches, relaxation and the Dask processes. A summary job can run `af2cpu report DIR`
once every array task succeeded (`afterok`).

Every value written into a script (paths, overrides, ``#SBATCH`` values) is checked for newlines and
other control characters, which are refused with an error naming the option, and the command line is
shell-quoted word by word; no user value is written into a comment.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from af2cpu.config import Precision, compose_config
from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.layout import BatchDir
from af2cpu.preprocessing.inputs import Target, read_fasta_batch
from af2cpu.runtime.memory import GIB, parse_memory_limit
from af2cpu.runtime.threads import without_chosen_wait
from af2cpu.scheduler.cluster import MemoryNeed, job_script_value, warn_if_short
from af2cpu.scheduler.stages import Stage, target_stages

log = logging.getLogger(__name__)

# The planner estimates one forward pass; searches, relaxation, the Dask scheduler and worker
# processes and the page cache of the databases come on top.
HEADROOM_FACTOR = 1.25
HEADROOM_BYTES = 3 * GIB
# Task ids equal shard indices (the array is 0..N-1), so a task resubmitted alone keeps its shard,
# which SLURM_ARRAY_TASK_MIN/MAX/COUNT of a partial resubmission would not tell.
TASK_ID = '"$SLURM_ARRAY_TASK_ID"'


@dataclass
class ArrayJob:
    """Everything the sbatch script says."""

    fasta: Path
    out_dir: Path
    array_count: int
    cpus_per_task: int
    mem: str  # in sbatch's syntax, e.g. "8G"
    overrides: list[str] = field(default_factory=list)
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    job_name: str = "af2cpu"
    python: str = sys.executable

    def __post_init__(self) -> None:
        values = {"the FASTA path": self.fasta, "--out": self.out_dir, "--mem": self.mem, "--time": self.time,
                  "--partition": self.partition, "--account": self.account, "the job name": self.job_name,
                  "the Python path": self.python}
        for what, value in values.items():
            if value is not None:
                job_script_value(what, value)
        for override in self.overrides:
            job_script_value("the override", override)

    @property
    def log_dir(self) -> Path:
        return BatchDir(self.out_dir).logs

    def predict_command(self) -> list[str]:
        """The command each array task runs, its shard named by SLURM_ARRAY_TASK_ID (a shell word)."""
        return [self.python, "-m", "af2cpu", "predict", str(self.fasta), "--out", str(self.out_dir),
                "--array-index", TASK_ID, "--array-count", str(self.array_count), *self.overrides]

    def report_command(self) -> list[str]:
        return [self.python, "-m", "af2cpu", "report", str(self.out_dir)]


def estimated_memory(stages: Sequence[Stage], length: int) -> int:
    """Bytes to ask per array task for targets of up to `length` residues: the largest estimate of the
    declared stages, plus headroom."""
    peak = max((stage.memory(length) for stage in stages if stage.memory is not None), default=0)
    return int(peak * HEADROOM_FACTOR) + HEADROOM_BYTES


def largest_memory_need(targets: Sequence[Target], stages: Callable[[Target], Sequence[Stage]]) -> MemoryNeed:
    """What one worker process needs to run any stage of ``targets`` (a SLURM array task, a dask-jobqueue
    worker): the largest estimated_memory of a target's ``stages`` (declared to run on the compute nodes,
    whose CPUs decide runtime.precision=auto), and the target that needs it."""
    return max((MemoryNeed(estimated_memory(stages(t), t.num_residues), t.id, t.num_residues) for t in targets),
               key=lambda need: need.nbytes)


def shell_words(command: Sequence[str]) -> str:
    """`command` for bash, every word quoted except the task-id variable."""
    return " ".join(word if word == TASK_ID else shlex.quote(word) for word in command)


def directive_value(what: str, value: object) -> str:
    """A value of an ``#SBATCH`` line: sbatch splits those lines at white space outside double quotes, so
    a value with spaces is double-quoted, and one with a double quote is refused."""
    text = job_script_value(what, value)
    if '"' in text:
        raise ConfigError(f"{what} {text!r} contains a double quote, which an #SBATCH line cannot carry")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _sbatch_options(job: ArrayJob, name: str) -> list[str]:
    lines = [f"--job-name={directive_value('the job name', name)}", f"--cpus-per-task={job.cpus_per_task}",
             f"--mem={directive_value('--mem', job.mem)}", "--ntasks=1", "--nodes=1"]
    if job.time:
        lines.append(f"--time={directive_value('--time', job.time)}")
    if job.partition:
        lines.append(f"--partition={directive_value('--partition', job.partition)}")
    if job.account:
        lines.append(f"--account={directive_value('--account', job.account)}")
    return lines


def array_script(job: ArrayJob) -> str:
    """The sbatch script of the array job."""
    options = _sbatch_options(job, job.job_name) + [
        f"--array=0-{job.array_count - 1}",
        f"--output={directive_value('--out', f'{job.log_dir}/%x_%A_%a.out')}",
        f"--error={directive_value('--out', f'{job.log_dir}/%x_%A_%a.err')}",
    ]
    header = "".join(f"#SBATCH {option}\n" for option in options)
    return (
        "#!/bin/bash\n"
        f"{header}"
        f"# Written by `af2cpu slurm script`: {job.array_count} array task(s), task I folding shard I of\n"
        "# the FASTA file on the exec line below. The count is fixed here, so some tasks can be\n"
        "# rerun alone (`sbatch --array=3,7 THIS_SCRIPT`); a rerun resumes, keeping finished stages.\n"
        "set -euo pipefail\n"
        f"export OMP_NUM_THREADS={job.cpus_per_task}\n"
        f"exec {shell_words(job.predict_command())}\n"
    )


def summary_script(job: ArrayJob) -> str:
    """The sbatch script of the summary job (submitted with afterok on the array)."""
    options = [f"--job-name={directive_value('the job name', job.job_name + '-report')}", "--cpus-per-task=1",
               "--mem=1G", "--ntasks=1", f"--output={directive_value('--out', f'{job.log_dir}/%x_%j.out')}",
               f"--error={directive_value('--out', f'{job.log_dir}/%x_%j.err')}"]
    if job.partition:
        options.append(f"--partition={directive_value('--partition', job.partition)}")
    if job.account:
        options.append(f"--account={directive_value('--account', job.account)}")
    header = "".join(f"#SBATCH {option}\n" for option in options)
    return f"#!/bin/bash\n{header}set -euo pipefail\nexec {shell_words(job.report_command())}\n"


def require_sbatch() -> None:
    """A clear error where sbatch is missing."""
    if shutil.which("sbatch") is None:
        raise Af2CpuError("sbatch was not found on PATH: run this on a SLURM login node (or load the SLURM "
                          "module), or leave out --submit and submit the script there yourself")


def sbatch(args: Sequence[str]) -> str:
    """Run sbatch --parsable with `args`; returns the job id."""
    require_sbatch()
    # The job runs elsewhere and chooses its own OpenMP wait (sbatch exports this environment).
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=False,
                          env=without_chosen_wait(dict(os.environ)))
    if proc.returncode != 0:
        raise Af2CpuError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def plan_job(fasta: str, out: str, overrides: Sequence[str], array_count: int | None = None,
             cpus_per_task: int | None = None, mem: str | None = None, time: str | None = None,
             partition: str | None = None, account: str | None = None) -> ArrayJob:
    """An ArrayJob for `fasta`: the array size defaults to one task per target, memory to the planner's
    estimate for the longest target. The overrides are checked now, not on the cluster."""
    cfg = compose_config(list(overrides))
    targets, invalid = read_fasta_batch(fasta)
    for error in invalid:
        log.warning("invalid record (predict will skip it): %s", error)
    if not targets:
        raise Af2CpuError(f"{fasta} has no valid record to fold")
    count = len(targets) if array_count is None else array_count
    if not 1 <= count <= len(targets):
        raise ConfigError(f"--array-count {count} must be between 1 and the number of targets ({len(targets)})")
    cpus = cpus_per_task or 4
    if cpus < 1:
        raise ConfigError(f"--cpus-per-task must be at least 1, not {cpus}")
    # A complex's inference runs the multimer presets on all its chains together. The stages run on the
    # compute nodes, whose CPUs decide runtime.precision=auto (planning_precisions).
    need = largest_memory_need(targets, lambda t: target_stages(cfg, "predict", t, elsewhere=True))
    if mem is None:
        mem = f"{math.ceil(need.nbytes / GIB)}G"
        log.info("memory per task: %s (planner estimate for %s, %d residues, plus headroom%s)",
                 mem, need.target, need.residues, "; runtime.precision=auto: the larger of fp32 and bf16, as "
                 "the compute nodes' CPUs decide" if cfg.runtime.precision is Precision.auto else "")
    else:
        # sbatch reads a bare number as megabytes (runtime.memory_limit as bytes): given the unit, both read
        # the same size.
        mem = f"{mem.strip()}M" if mem.strip().isdigit() else mem.strip()
        try:
            requested = parse_memory_limit(mem)
        except ConfigError:
            raise ConfigError(f"--mem {mem!r} is not a size: write e.g. 16G") from None
        warn_if_short(f"--mem {mem}", requested, need)
    extra = list(overrides)
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    # Inside the job, "auto" would see the whole node; the allocation is what this task may use.
    if "runtime.memory_limit" not in keys:
        extra.append(f"runtime.memory_limit={mem}")
    # One model instance of the task's CPUs, in one Dask worker that has the whole allocation's memory.
    if "runtime.threads" not in keys:
        extra.append(f"runtime.threads={cpus}")
    if "scheduler.n_workers" not in keys:
        extra.append("scheduler.n_workers=1")
    return ArrayJob(Path(fasta).resolve(), Path(out).resolve(), count, cpus, mem, extra, time, partition, account)
