"""HPC on a real one-node SLURM (tests/slurm.py): job arrays, resume after scancel, the generated sbatch
script, dask-jobqueue workers as SLURM jobs, bad array options, and `af2cpu report`.

Short real proteins, one model without recycling and no relaxation keep each prediction to seconds;
every SLURM result is compared with a local `af2cpu predict` of the same targets and overrides.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slurm import SlurmUnavailable, start_slurm

from af2cpu.config import SchedulerConfig
from af2cpu.errors import Af2CpuError
from af2cpu.scheduler.cluster import start_cluster

CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"  # 1EJG, 46 aa
VILLIN = "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF"  # 1YRF villin headpiece HP35, 35 aa
TARGETS = {"1EJG_A crambin": CRAMBIN, "1YRF_A villin headpiece": VILLIN}
OVERRIDES = ["params=random", "model.names=[model_3_ptm]", "model.num_recycle=0", "relax=none",
             "runtime.threads=1"]
FINAL = ("ranking_debug.json", "ranked_0.pdb", "timings.json")
# Local and SLURM runs execute the same code with one thread on the same machine; the measured
# difference of every result array was 0.0. The tolerance leaves room for a BLAS that picks
# another kernel on another CPU, nothing more.
ATOL = 1e-5


def af2cpu(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "af2cpu", *args], capture_output=True, text=True,
                          env={**(env or os.environ), "OMP_NUM_THREADS": "1"}, timeout=timeout,
                          check=False)


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{header}\n{seq}\n" for header, seq in records.items()))
    return path


def assert_same_outputs(folder: Path, reference: Path) -> float:
    """Every result array and the ranking equal the reference's; returns the largest difference."""
    assert json.loads((folder / "ranking_debug.json").read_text())["order"] == \
        json.loads((reference / "ranking_debug.json").read_text())["order"]
    largest = 0.0
    names = sorted(p.name for p in reference.glob("result_*.npz"))
    assert names and names == sorted(p.name for p in folder.glob("result_*.npz"))
    for name in names:
        with np.load(folder / name) as got, np.load(reference / name) as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                assert got[key].shape == want[key].shape, f"{name}:{key}"
                if np.issubdtype(want[key].dtype, np.number) and want[key].size:
                    diff = float(np.max(np.abs(got[key].astype(np.float64) - want[key].astype(np.float64))))
                    assert diff <= ATOL, f"{folder.name}/{name}:{key} differs by {diff}"
                    largest = max(largest, diff)
                else:
                    assert np.array_equal(got[key], want[key]), f"{name}:{key}"
    return largest


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    try:
        cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no SLURM: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    return write_fasta(tmp_path_factory.mktemp("hpc") / "targets.fasta", TARGETS)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: a local predict of the two targets plus one whose search cannot run (failed)."""
    root = tmp_path_factory.mktemp("local")
    fasta = write_fasta(root / "targets.fasta", {**TARGETS, "broken_target": CRAMBIN[:30]})
    out = root / "out"
    (out / "broken_target").mkdir(parents=True)
    (out / "broken_target" / "msas").write_text("a file where the msas/ folder must go\n")
    (out / ".af2cpu-output").touch()
    proc = af2cpu("predict", str(fasta), "--out", str(out), *OVERRIDES)
    assert proc.returncode == 3, proc.stderr[-3000:]  # partial: broken_target failed
    return out


@pytest.fixture(scope="module")
def array_run(slurm, fasta, tmp_path_factory):
    """The generated sbatch script as a 2-task array; task 0 is cancelled after its first stages and
    resubmitted alone. Returns (out folder, script, records of task 0 before the cancel, states)."""
    out = tmp_path_factory.mktemp("array") / "out"
    proc = af2cpu("slurm", "script", str(fasta), "--out", str(out), "--array-count", "2", "--cpus-per-task", "1",
                  "--mem", "3G", "--time", "00:30:00", "--summary-job", "--submit", *OVERRIDES, env=slurm.env)
    assert proc.returncode == 0, proc.stderr
    script, report_script = out / "af2cpu_array.sbatch", out / "af2cpu_array_report.sbatch"
    job = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    first_report = re.search(r"submitted report job (\d+)", proc.stdout).group(1)
    first = out / "1EJG_A"  # the longest target: shard 0
    deadline = time.monotonic() + 600
    while not (first / "features.stage.json").is_file():
        assert time.monotonic() < deadline, f"task 0 wrote no features record: {slurm.job_states(job)}"
        time.sleep(0.05)
    slurm.run("scancel", f"{job}_0")
    states = slurm.wait_for_job(job)
    slurm.run("scancel", first_report)  # its afterok on the array can never be met now
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.glob("*.stage.json")}
    interrupted = not all((first / name).is_file() for name in FINAL)
    report_mid_way = af2cpu("report", str(out))
    resubmitted = slurm.run("sbatch", "--parsable", "--array=0", str(script)).stdout.strip()
    report_job = slurm.run("sbatch", "--parsable", f"--dependency=afterok:{resubmitted}", str(report_script)).stdout
    states.update(slurm.wait_for_job(resubmitted))
    states.update(slurm.wait_for_job(report_job.strip()))
    return {"out": out, "script": script, "before": before, "interrupted": interrupted, "states": states,
            "job": job, "resubmitted": resubmitted, "report_job": report_job.strip(),
            "report_mid_way": report_mid_way}


@pytest.mark.slow
@pytest.mark.slurm
def test_array_job_outputs_equal_a_local_predict(array_run, local_run):
    out = array_run["out"]
    states = array_run["states"]
    assert states[f"{array_run['job']}_1"] == "COMPLETED", states
    assert states[f"{array_run['resubmitted']}_0"] == "COMPLETED", states
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert any(name.endswith(f"_{array_run['job']}_1.out") for name in logs), logs
    for target in ("1EJG_A", "1YRF_A"):
        assert_same_outputs(out / target, local_run / target)
    # The summary job ran `af2cpu report` once the array had succeeded.
    assert states[array_run["report_job"]] == "COMPLETED", states
    assert json.loads((out / "report.json").read_text())["counts"] == {"done": 2, "failed": 0, "pending": 0, "skipped": 0}


@pytest.mark.slow
@pytest.mark.slurm
def test_cancelled_array_task_resumes_without_redoing_finished_stages(array_run):
    assert array_run["interrupted"], "task 0 finished before scancel reached it: nothing was interrupted"
    assert array_run["states"][f"{array_run['job']}_0"] == "CANCELLED", array_run["states"]
    before = array_run["before"]
    assert "features.stage.json" in before and "search_uniref90.stage.json" in before
    folder = array_run["out"] / "1EJG_A"
    for name, (data, mtime_ns) in before.items():
        path = folder / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime_ns, f"{name} was redone"
    assert (folder / "infer_model_3_ptm.stage.json").is_file()
    assert all((folder / name).is_file() for name in FINAL)
    # While task 0 was cancelled, the report called its target pending, not failed.
    mid_way = array_run["report_mid_way"]
    assert mid_way.returncode == 0, mid_way.stderr
    row = next(line for line in mid_way.stdout.splitlines() if line.startswith("1EJG_A"))
    assert row.split()[1] == "pending"


@pytest.mark.slow
@pytest.mark.slurm
def test_generated_script_passes_sbatch_test_only(array_run, slurm):
    proc = slurm.run("sbatch", "--test-only", str(array_run["script"]), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr
    text = array_run["script"].read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --cpus-per-task=1" in text and "#SBATCH --mem=3G" in text
    assert '--array-index "$SLURM_ARRAY_TASK_ID" --array-count 2' in text


@pytest.mark.slow
def test_report_lists_done_failed_and_pending(local_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run, out)
    for name in FINAL:  # as if 1YRF_A's array task had not got that far yet
        (out / "1YRF_A" / name).unlink()
    proc = af2cpu("report", str(out))
    assert proc.returncode == 0, proc.stderr
    status = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:-2]}
    assert status == {"1EJG_A": "done", "1YRF_A": "pending", "broken_target": "failed"}
    payload = json.loads((out / "report.json").read_text())
    assert payload["counts"] == {"done": 1, "failed": 1, "pending": 1, "skipped": 0}
    by_id = {t["target_id"]: t for t in payload["targets"]}
    ranking = json.loads((out / "1EJG_A" / "ranking_debug.json").read_text())
    assert by_id["1EJG_A"]["best_model"] == "model_3_ptm"
    assert by_id["1EJG_A"]["mean_plddt"] == pytest.approx(ranking["plddts"]["model_3_ptm"], abs=1e-3)
    assert 0 <= by_id["1EJG_A"]["ptm"] <= 1
    assert {"search_uniref90", "features", "infer_model_3_ptm"} <= set(by_id["1EJG_A"]["stage_seconds"])
    assert by_id["broken_target"]["failure_reason"]
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("target_id,status,length,best_model,mean_plddt,ptm,total_s,")
    assert len(rows) == 4


@pytest.mark.slow
@pytest.mark.slurm
def test_scheduler_slurm_runs_a_batch_on_jobqueue_workers(slurm, local_run, tmp_path):
    fasta = write_fasta(tmp_path / "one.fasta", {"1YRF_A villin headpiece": VILLIN})
    out, logs = tmp_path / "out", tmp_path / "worker-logs"
    proc = af2cpu("predict", str(fasta), "--out", str(out), *OVERRIDES, "scheduler=slurm", "scheduler.host=127.0.0.1", "scheduler.cores=1",
                  "scheduler.memory=3GiB", "scheduler.walltime=00:30:00", "scheduler.adapt_maximum=1",
                  f"scheduler.log_directory={logs}", env=slurm.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(out / "1YRF_A", local_run / "1YRF_A")
    worker_logs = "".join(p.read_text() for p in logs.glob("*.err"))
    assert "Registered to" in worker_logs  # the Dask worker ran inside a SLURM job
    deadline = time.monotonic() + 120
    while slurm.run("squeue", "--noheader", "--name=af2cpu-worker").stdout.strip():
        assert time.monotonic() < deadline, "the worker jobs were not cancelled when predict ended"
        time.sleep(0.5)


@pytest.mark.slurm
def test_scheduler_slurm_with_a_partition_slurm_refuses_fails_at_once(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    with pytest.raises(Af2CpuError, match="SLURM refuses the Dask worker job"):
        start_cluster(SchedulerConfig(kind="slurm", queue="no_such_partition", cores=1, memory="1GiB", host="127.0.0.1"))
