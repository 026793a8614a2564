"""HPC commands on bad input, without a batch system: a clear message, exit status 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"
VILLIN = "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF"
OVERRIDES = ["params=random", "model.names=[model_3_ptm]", "relax=none"]


def af2cpu(*args, env=None):
    return subprocess.run([sys.executable, "-m", "af2cpu", *args], capture_output=True, text=True,
                          env=env or os.environ, timeout=300, check=False)


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "targets.fasta"
    path.write_text(f">1EJG_A crambin\n{CRAMBIN}\n>1YRF_A villin headpiece\n{VILLIN}\n")
    return path


def test_array_index_outside_the_array_exits_2_and_writes_nothing(fasta, tmp_path):
    out = tmp_path / "out"
    for options in (["--array-index", "2", "--array-count", "2"], ["--array-index", "0", "--array-count", "3"]):
        proc = af2cpu("predict", str(fasta), "--out", str(out), *options, *OVERRIDES)
        assert proc.returncode == 2, proc.stderr
        assert "array" in proc.stderr.splitlines()[-1]
        assert not out.exists()


def test_slurm_submit_without_sbatch_exits_2_and_writes_nothing(fasta, tmp_path):
    out = tmp_path / "out"
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "sbatch").exists())
    proc = af2cpu("slurm", "script", str(fasta), "--out", str(out), "--submit", *OVERRIDES,
                  env={**os.environ, "PATH": path})
    assert proc.returncode == 2
    assert "sbatch was not found" in proc.stderr
    assert not out.exists()


def test_pbs_worker_jobs_advertise_their_share_of_cores():
    from dask_jobqueue import PBSCluster

    from af2cpu.config import compose_config
    from af2cpu.runtime.threads import user_wait_variables
    from af2cpu.scheduler.cluster import jobqueue_options

    cfg = compose_config(["scheduler=pbs", "scheduler.cores=8", "scheduler.processes=2", "scheduler.memory=16GiB",
                          "scheduler.queue=workq",
                          "scheduler.account=bio", 'scheduler.job_directives=["-l place=scatter"]'])
    cluster = PBSCluster(**jobqueue_options(cfg.scheduler))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#PBS -q workq", "#PBS -A bio", "#PBS -l select=1:ncpus=8:mem=16GB", "#PBS -l place=scatter",
                 "export OMP_NUM_THREADS=4",
                 # OpenMP's wait policy reaches the worker before it loads torch: passive on CPUs af2cpu
                 # cannot look at from here (unless the user chose one).
                 *(f"export {k}={v}" for k, v in (user_wait_variables() or {"OMP_WAIT_POLICY": "PASSIVE"}).items())):
        assert line in script.splitlines(), script
    assert "--nworkers 2" in script and "--resources cpus=4" in script


def test_slurm_memory_for_auto_precision_covers_a_compute_node_without_native_bf16(tmp_path):
    from af2cpu.scheduler.slurm import plan_job

    # 900 residues: fp32 activations need gigabytes more than bf16, so the two plans differ in whole GiB.
    fasta = tmp_path / "long.fasta"
    fasta.write_text(">long\n" + (CRAMBIN * 20)[:900] + "\n")

    def mem(precision):
        return int(plan_job(str(fasta), str(tmp_path / "out"), [*OVERRIDES, f"runtime.precision={precision}"]).mem[:-1])

    # auto resolves on the compute node: the request must cover fp32 whatever CPU plans the job.
    assert mem("fp32") > mem("bf16")
    assert mem("auto") == mem("fp32")


def _worker_job_script(cfg, need) -> str:
    from dask_jobqueue import SLURMCluster

    from af2cpu.scheduler.cluster import jobqueue_options

    cluster = SLURMCluster(**jobqueue_options(cfg.scheduler, need))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def test_jobqueue_worker_memory_follows_the_batchs_largest_stage_estimate(tmp_path, caplog):
    from af2cpu.config import compose_config
    from af2cpu.errors import ConfigError
    from af2cpu.preprocessing.inputs import Target
    from af2cpu.runtime.memory import GIB
    from af2cpu.scheduler.cluster import jobqueue_options
    from af2cpu.scheduler.slurm import estimated_memory, largest_memory_need, plan_job
    from af2cpu.scheduler.stages import target_stages

    # scheduler.memory is auto unless set: each job asks for its two workers' share of the largest estimate.
    cfg = compose_config([*OVERRIDES, "scheduler=slurm", "scheduler.cores=4", "scheduler.processes=2"])
    targets = [Target("short", "", VILLIN), Target("long", "", (CRAMBIN * 20)[:900]), Target("mid", "", CRAMBIN * 4)]
    need = largest_memory_need(targets, lambda t: target_stages(cfg, "predict", t))
    assert need.target == "long" and need.residues == 900
    assert need.nbytes == estimated_memory(target_stages(cfg, "predict", targets[1]), 900)
    # The same figure as an array task of `af2cpu slurm script` (its stages planned for the compute nodes).
    fasta = tmp_path / "long.fasta"
    fasta.write_text(f">long\n{targets[1].sequence}\n")
    per_task = int(plan_job(str(fasta), str(tmp_path / "out"), OVERRIDES).mem[:-1])
    assert per_task == -(-need.nbytes // GIB)
    assert f"#SBATCH --mem={-(-2 * need.nbytes // GIB)}G" in _worker_job_script(cfg, need).splitlines()
    with pytest.raises(ConfigError, match="scheduler.memory=auto .* set scheduler.memory"):
        jobqueue_options(cfg.scheduler)

    # A set value wins; below the estimate it is warned about, naming the target and the figures.
    small = compose_config([*OVERRIDES, "scheduler=slurm", "scheduler.processes=2", "scheduler.memory=8GiB"])
    with caplog.at_level("WARNING", logger="af2cpu.scheduler.cluster"):
        assert "#SBATCH --mem=8G" in _worker_job_script(small, need).splitlines()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "scheduler.memory=8GiB" in warning and "4.0 GiB" in warning and "long (900 residues" in warning
    assert f"{need.nbytes / GIB:.1f} GiB" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="af2cpu.scheduler.cluster"):
        big = compose_config([*OVERRIDES, "scheduler=slurm", f"scheduler.memory={-(-need.nbytes // GIB)}GiB"])
        _worker_job_script(big, need)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_slurm_mem_as_a_bare_number_is_megabytes_for_sbatch_and_the_job_alike(fasta, tmp_path):
    from af2cpu.runtime.memory import parse_memory_limit
    from af2cpu.scheduler.slurm import plan_job

    job = plan_job(str(fasta), str(tmp_path / "out"), OVERRIDES, mem="16000")
    # sbatch reads --mem=16000 as 16000 MB; the job's planner must not read the same figure as bytes.
    assert job.mem == "16000M"
    (limit,) = [o.split("=", 1)[1] for o in job.overrides if o.startswith("runtime.memory_limit=")]
    assert parse_memory_limit(limit) == 16000 << 20
