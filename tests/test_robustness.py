"""Issue 18: nothing corrupt is trusted, nothing injected runs. One test (or more) per defect found by
trying to break af2cpu; each failed before its fix. The whole-folder fault suite is tests/test_faults.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from af2cpu.errors import InputError, ToolError
from af2cpu.io import atomic_write_bytes, file_hash, load_features_npz, load_result_npz, save_features_npz
from af2cpu.layout import BatchDir
from af2cpu.preprocessing import parsers, searches, tools
from af2cpu.preprocessing.inputs import read_fasta_batch
from af2cpu.scheduler.cache import StageCache
from af2cpu.summary import TargetSummary, merge_batch_summary, read_batch_summary

DATA = Path(__file__).parent / "data" / "preprocessing"
GLOBINS4 = DATA / "stockholm" / "globins4.sto"
HBB = DATA / "stockholm" / "hbb_vs_globins45.sto"


# --- stage records name their outputs' size and sha256 (rows 2, 3, 4) ------------------------------


def _finished_stage(tmp_path: Path):
    cache = StageCache(tmp_path / "T1")
    calls: list[int] = []

    def compute(folder: Path) -> list[str]:
        calls.append(1)
        (folder / "msas").mkdir(exist_ok=True)
        atomic_write_bytes(folder / "msas" / "uniref90_hits.sto", GLOBINS4.read_bytes())
        return ["msas/uniref90_hits.sto"]

    cache.run("search_uniref90", "k1", compute)
    return cache, calls, compute


@pytest.mark.parametrize("damage", ["truncate", "garbage", "swap"])
def test_a_changed_output_is_reported_in_one_line_and_recomputed(tmp_path, caplog, damage):
    cache, calls, compute = _finished_stage(tmp_path)
    output = tmp_path / "T1" / "msas" / "uniref90_hits.sto"
    original = output.read_bytes()
    if damage == "truncate":
        output.write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        output.write_bytes(bytes(range(256)) * 4)
    else:  # another target's result of the same size would still differ in content
        other = bytearray(original)
        other[200] ^= 1
        output.write_bytes(bytes(other))
    with caplog.at_level(logging.WARNING, logger="af2cpu.scheduler.cache"):
        record, cached = cache.run("search_uniref90", "k1", compute)
    assert not cached and len(calls) == 2 and output.read_bytes() == original
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(output) in lines[0] and "\n" not in lines[0]
    assert ("truncated" in lines[0]) == (damage != "swap")
    assert record.checksums["msas/uniref90_hits.sto"]["size"] == len(original)
    _, cached = cache.run("search_uniref90", "k1", compute)
    assert cached and len(calls) == 2


def test_an_unreadable_record_is_discarded_with_a_warning(tmp_path, caplog):
    cache, calls, compute = _finished_stage(tmp_path)
    cache.record_path("search_uniref90").write_bytes(b'{"stage": "search_unir')
    with caplog.at_level(logging.WARNING):
        _, cached = cache.run("search_uniref90", "k1", compute)
    assert not cached and len(calls) == 2
    assert "unreadable" in caplog.text and str(cache.record_path("search_uniref90")) in caplog.text


# --- row 2: npz readers name the file and never advise unpickling --------------------------------


@pytest.mark.parametrize("content", ["truncated", "garbage", "pickle"])
@pytest.mark.parametrize("reader", [load_features_npz, load_result_npz])
def test_a_damaged_npz_is_named_and_unpickling_never_suggested(tmp_path, content, reader):
    path = tmp_path / "features.npz"
    save_features_npz(path, {"aatype": np.zeros((5, 21), np.int32), "sequence": np.array([b"AAAAA"], object)})
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[: len(whole) // 2], "garbage": b"\x00not a zip\xff" * 50,
                      "pickle": pickle.dumps(np.array([object()], dtype=object))}[content])
    with pytest.raises(InputError) as error:
        reader(path)
    message = str(error.value)
    assert str(path) in message and "allow_pickle" not in message and "\n" not in message
    assert "truncated or not" in message


# --- rows 3 and 4: the Stockholm parser detects truncation and garbage ---------------------------


def test_a_stockholm_file_cut_at_a_line_boundary_is_rejected(tmp_path):
    lines = HBB.read_text().splitlines(keepends=True)
    cut = tmp_path / "uniref90_hits.sto"
    cut.write_text("".join(lines[:100]))  # inside the alignment, at a line boundary
    assert len(parsers.read_stockholm(HBB)) > 40
    with pytest.raises(parsers.MsaFormatError, match=r"uniref90_hits\.sto.*does not end with '//'"):
        parsers.read_stockholm(cut)
    with pytest.raises(parsers.MsaFormatError, match="truncated"):
        parsers.read_stockholm(cut, max_sequences=10)


def test_a_stockholm_block_with_missing_rows_is_rejected(tmp_path):
    lines = GLOBINS4.read_text().splitlines(keepends=True)
    damaged = tmp_path / "mgnify_hits.sto"
    damaged.write_text("".join(line for i, line in enumerate(lines) if i != 10))  # a row of block 2
    with pytest.raises(parsers.MsaFormatError, match=r"mgnify_hits\.sto:\d+: this alignment block has 3 row"):
        parsers.read_stockholm(damaged)


def test_a_garbage_stockholm_is_named_by_the_template_search(tmp_path):
    garbage = tmp_path / "uniref90_hits.sto"
    garbage.write_bytes(b"# STOCKHOLM 1.0\nthree fields here\n\xff\xfe\n//\n")
    with pytest.raises(parsers.MsaFormatError, match=r"uniref90_hits\.sto:2: expected '<name> <aligned"):
        tools.template_query_msa(garbage)
    garbage.write_bytes(bytes(range(256)))
    with pytest.raises(parsers.MsaFormatError, match=r"uniref90_hits\.sto"):
        parsers.read_stockholm(garbage)


def test_an_hhr_hit_without_its_template_row_is_rejected(tmp_path):
    text = (DATA / "hhr" / "4p79_hhsearch_server_NOssm.hhr").read_text().splitlines(keepends=True)
    last_query_row = max(i for i, line in enumerate(text) if line.startswith("Q ") and "Consensus" not in line
                         and "ss_" not in line)
    cut = tmp_path / "pdb_hits.hhr"
    cut.write_text("".join(text[: last_query_row + 1]))
    with pytest.raises(parsers.MsaFormatError, match=r"pdb_hits\.hhr:\d+: hit 8 ends without its template row"):
        parsers.read_hhr(cut)


def test_search_provenance_checks_the_result_it_describes(tmp_path, monkeypatch):
    """A search result replaced after its provenance was written is not reused (--precomputed-msas too)."""
    payload = {"key": {"k": 1}, "size": GLOBINS4.stat().st_size, "sha256": "0" * 64}
    result = tmp_path / "uniref90_hits.sto"
    result.write_bytes(GLOBINS4.read_bytes())
    searches.sidecar(result).write_text(json.dumps(payload))
    search = searches.SEARCHES["uniref90"]
    # The provenance itself matches (sequence, databases, tools); only the result file differs.
    monkeypatch.setattr(searches, "provenance_key", lambda *a: {"k": 1})
    assert not searches.reusable(search, "SEQ", tmp_path, {})
    payload["sha256"] = file_hash(result)
    searches.sidecar(result).write_text(json.dumps(payload))
    assert searches.reusable(search, "SEQ", tmp_path, {})


# --- rows 5, 6, 12, 13 and the summary's lock: batch files are robust ------------------------------

CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"


def test_record_ids_never_take_a_batch_file_name(tmp_path):
    names = ["summary.json", "summary.tsv", "report.csv", "report.json", "logs", "LOGS", "af2cpu_array.sbatch"]
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{name} a record\n{CRAMBIN}\n" for name in names))
    targets, invalid = read_fasta_batch(fasta)
    assert not invalid and len({t.id.lower() for t in targets}) == len(names)
    reserved = {n.lower() for n in BatchDir.reserved_names()}
    assert not {t.id.lower() for t in targets} & reserved
    assert targets[0].id == "summary.json_2" and targets[0].description == "summary.json a record"


def test_a_fasta_with_a_byte_order_mark_is_read(tmp_path):
    fasta = tmp_path / "bom.fasta"
    fasta.write_bytes(b"\xef\xbb\xbf>1EJG_A crambin\n" + CRAMBIN.encode() + b"\n")
    targets, invalid = read_fasta_batch(fasta)
    assert not invalid and [t.id for t in targets] == ["1EJG_A"] and targets[0].sequence == CRAMBIN


def test_skipped_records_are_in_the_summary_with_their_reason(tmp_path):
    """A batch of invalid records only: nothing runs, and summary.tsv/.json list each as skipped."""
    from af2cpu.scheduler.batch import run_batch

    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">stop codon\nMKV*LLA\n>empty\n\n>stop\nMK1\n")
    result = run_batch(fasta, tmp_path / "out", ["params=random"], quiet=True)
    assert result.exit_status == 1
    summary = {s.target_id: s for s in read_batch_summary(BatchDir(tmp_path / "out"))}
    assert set(summary) == {"stop", "empty", "stop_2"}
    assert all(s.status == "skipped" for s in summary.values())
    assert "'*'" in summary["stop"].failure_reason and "empty sequence" in summary["empty"].failure_reason
    tsv = (tmp_path / "out" / "summary.tsv").read_text().splitlines()
    assert len(tsv) == 4 and all("\tskipped\t" in line for line in tsv[1:])


def test_a_broken_summary_is_rebuilt_from_the_target_folders_with_a_warning(tmp_path, caplog):
    batch = BatchDir(tmp_path)
    batch.prepare()
    merge_batch_summary(batch, [TargetSummary("A", "failed", length=5, failure_reason="tool crashed"),
                                TargetSummary("B", "done", length=7, best_model="model_1", mean_plddt=50.0)],
                        rebuild=list)
    whole = batch.summary_json.read_bytes()
    batch.summary_json.write_bytes(whole[: len(whole) // 2])
    rebuilt = [TargetSummary("A", "failed", length=5, failure_reason="tool crashed")]
    with caplog.at_level(logging.WARNING):
        merge_batch_summary(batch, [TargetSummary("C", "done", length=9, best_model="model_1", mean_plddt=60.0)],
                            rebuild=lambda: rebuilt)
    assert f"{batch.summary_json} is damaged" in caplog.text and "rebuilding" in caplog.text
    assert [s.target_id for s in read_batch_summary(batch)] == ["A", "C"]


def _merge_many(out: str, worker: int) -> None:
    batch = BatchDir(out)
    for i in range(25):
        merge_batch_summary(batch, [TargetSummary(f"w{worker}_{i}", "done", length=i)], rebuild=list)


def test_concurrent_summary_merges_keep_every_entry(tmp_path):
    """Job-array tasks finishing together: four processes merge 25 entries each into one summary."""
    import multiprocessing

    BatchDir(tmp_path).prepare()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_merge_many, args=(str(tmp_path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert len(read_batch_summary(BatchDir(tmp_path))) == 100


# --- row 8: a tool is stopped whole; SIGTERM is handled as Ctrl-C ----------------------------------

FORKING_TOOL = """#!/bin/bash
# A search tool stand-in that forks helpers (one of them a grandchild) and hangs; it writes their pids.
if [ "$1" = "-h" ]; then echo "# HMMER 3.3.2 (a test stand-in)"; exit 0; fi
sleep 300 &
echo $! >> "$AF2CPU_TEST_PIDFILE"
( sleep 300 & echo $! >> "$AF2CPU_TEST_PIDFILE"; wait ) &
echo $! >> "$AF2CPU_TEST_PIDFILE"
echo $$ >> "$AF2CPU_TEST_PIDFILE"
wait
"""


def _forking_tool(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    script = tmp_path / "jackhmmer"
    script.write_text(FORKING_TOOL)
    script.chmod(0o755)
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("AF2CPU_TEST_PIDFILE", str(pidfile))
    return script, pidfile


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _pids(pidfile: Path, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the tool stand-in did not start its helpers: {pidfile}")


def _none_survive(pids: list[int], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_a_timed_out_tool_is_killed_with_the_helpers_it_forked(tmp_path, monkeypatch):
    script, pidfile = _forking_tool(tmp_path, monkeypatch)
    with pytest.raises(ToolError, match="timed out after 1.5 s"):
        tools.run_tool("jackhmmer", [], timeout=1.5, binary=str(script))
    pids = _pids(pidfile, 4)
    assert _none_survive(pids), "a helper of the timed-out tool is still running"


def test_sigterm_during_a_search_stops_af2cpu_and_its_tools(tmp_path, monkeypatch):
    """SIGTERM (scancel, kill) is handled as Ctrl-C: one line, exit 143, no tool left running."""
    script, pidfile = _forking_tool(tmp_path, monkeypatch)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{CRAMBIN}\n")
    env = {**os.environ, "AF2CPU_JACKHMMER": str(script), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "af2cpu", "features", str(fasta), "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        pids = _pids(pidfile, 4, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "af2cpu features: terminated" in stderr and "Traceback" not in stderr
    assert _none_survive(pids), "a tool af2cpu started outlived it"
    assert not (tmp_path / "o" / "q" / ".af2cpu.lock").exists()


def test_features_takes_the_per_target_lock(tmp_path):
    """`af2cpu features` leaves a target that another live run holds (as predict does) and says so."""
    from af2cpu.scheduler.cache import TargetLock

    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{CRAMBIN}\n")
    out = tmp_path / "o"
    BatchDir(out).prepare()
    lock = TargetLock(out / "q" / ".af2cpu.lock")
    assert lock.acquire(timeout=0)
    try:
        proc = subprocess.run([sys.executable, "-m", "af2cpu", "features", str(fasta), "--out", str(out)],
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        lock.release()
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert f"q: failed: another live af2cpu run holds {out / 'q' / '.af2cpu.lock'}" in proc.stdout
    assert not (out / "q" / "msas").exists(), "a search ran on a locked target"


# --- row 9: one line per failure on the console, the traceback in the target's af2cpu.log --------

CRASHING_TOOL = """#!/bin/bash
if [ "$1" = "-h" ]; then echo "# HMMER 3.3.2 (a test stand-in)"; exit 0; fi
echo "Fatal exception (source file esl_sqio.c, line 42):" >&2
echo "database is corrupt" >&2
exit 1
"""


def test_a_failing_stage_is_one_line_on_the_console_and_whole_in_the_log(tmp_path):
    script = tmp_path / "jackhmmer"
    script.write_text(CRASHING_TOOL)
    script.chmod(0o755)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{CRAMBIN}\n")
    env = {**os.environ, "AF2CPU_JACKHMMER": str(script), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "af2cpu", "predict", str(fasta), "--out", str(tmp_path / "o"),
                           "params=random", "scheduler.retries=0"],
                          capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Compute Failed" not in proc.stderr, proc.stderr[-3000:]
    failures = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    log = tmp_path / "o" / "q" / "af2cpu.log"
    assert len(failures) == 1 and "jackhmmer failed with exit status 1" in failures[0]
    assert f"full error in {log}" in failures[0]
    text = log.read_text()
    assert "Traceback" in text and "database is corrupt" in text


# --- row 7: model names, parameter files, tools and databases are checked before any work ------

def _params_file(path: Path, ptm: bool = True) -> Path:
    arrays = {"alphafold/alphafold_iteration/evoformer/preprocess_1d//weights": np.zeros((22, 256), np.float32)}
    if ptm:
        arrays["alphafold/alphafold_iteration/predicted_aligned_error_head/logits//bias"] = np.zeros(64, np.float32)
    np.savez(path, **arrays)
    return path


def test_params_files_are_checked_without_loading_them(tmp_path):
    from af2cpu.model.weights import check_params_file

    good = _params_file(tmp_path / "params_model_1_ptm.npz")
    check_params_file(good, "model_1_ptm")
    with pytest.raises(InputError, match="holds a pTM model's parameters, not those of model_1"):
        check_params_file(good, "model_1")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"cut\.npz is unreadable, truncated"):
        check_params_file(cut, "model_1_ptm")
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(InputError, match="does not hold AlphaFold2 parameters"):
        check_params_file(other, "model_1_ptm")


def test_unknown_models_and_missing_tools_are_refused_before_any_work(tmp_path, monkeypatch):
    from af2cpu.config import compose_config
    from af2cpu.errors import Af2CpuError
    from af2cpu.scheduler.batch import check_before_work

    with pytest.raises(Af2CpuError, match="unknown model preset 'model_9_ptm'"):
        check_before_work(compose_config(["params=random", "model.names=[model_9_ptm]"]))
    monkeypatch.setenv("AF2CPU_HHBLITS", str(tmp_path / "no-hhblits"))
    with pytest.raises(ToolError, match="no-hhblits is not an executable"):
        check_before_work(compose_config(["params=random"]))
    check_before_work(compose_config(["params=random"]), searches=False)  # af2cpu infer searches nothing
    monkeypatch.delenv("AF2CPU_HHBLITS")
    with pytest.raises(Af2CpuError, match="uniref90: file .*missing"):
        check_before_work(compose_config(["params=random", f"db.uniref90={tmp_path / 'none.fasta'}"]))


def test_a_damaged_params_file_stops_predict_before_the_searches(tmp_path):
    params = tmp_path / "params"
    params.mkdir()
    (params / "params_model_1_ptm.npz").write_bytes(b"PK\x03\x04 cut short")
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{CRAMBIN}\n")
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "af2cpu", "predict", str(fasta), "--out", str(out),
                           f"params_dir={params}", "model.names=[model_1_ptm]"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "params_model_1_ptm.npz is unreadable, truncated" in errors[0]
    assert "Traceback" not in proc.stderr and not out.exists()


# --- rows 10 and 11: the relax command checks --out first and logs no traceback ----------------

STRUCTURES = Path(__file__).parent / "data" / "structures"


def test_relax_refuses_a_missing_out_folder_before_relaxing(tmp_path, capsys):
    from af2cpu.cli import main

    out = tmp_path / "missing" / "relaxed.pdb"
    assert main(["relax", str(STRUCTURES / "1ubi.pdb"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the folder of --out {out} does not exist" in err and "Traceback" not in err


def test_relax_of_overlapping_atoms_logs_no_error(tmp_path, capsys, caplog):
    """Atoms exactly on top of each other: the initial energy is not finite (None in the report)."""
    from af2cpu.cli import main
    from af2cpu.common import protein
    from af2cpu.common import residue_constants as rc

    prot = protein.from_pdb_string((STRUCTURES / "1ubi.pdb").read_text())
    positions = prot.atom_positions.copy()
    positions[5, rc.atom_order["NZ"]] = positions[43, rc.atom_order["CD1"]]
    overlapping = tmp_path / "overlap.pdb"
    overlapping.write_text(protein.to_pdb(dataclasses.replace(prot, atom_positions=positions)))
    out = tmp_path / "relaxed.pdb"
    with caplog.at_level(logging.INFO):
        assert main(["relax", str(overlapping), "--out", str(out), "--threads", "2"]) == 0
    assert json.loads((tmp_path / "relaxed.json").read_text())["initial_energy"] is None
    assert "energy not finite ->" in caplog.text
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err


# --- row 1: generated job scripts are data-safe ---------------------------------------------------


@pytest.mark.parametrize("option", ["fasta", "out", "partition", "account", "time", "mem", "override"])
def test_a_newline_in_any_job_script_value_is_refused(tmp_path, option):
    from af2cpu.errors import ConfigError
    from af2cpu.scheduler.slurm import ArrayJob

    hostile = "x\necho INJECTED"
    values = {"fasta": tmp_path / "q.fasta", "out_dir": tmp_path / "o", "array_count": 1, "cpus_per_task": 2,
              "mem": "4G", "overrides": ["relax=none"]}
    if option in ("fasta", "out"):
        values["fasta" if option == "fasta" else "out_dir"] = tmp_path / hostile
    elif option == "override":
        values["overrides"] = [f"relax={hostile}"]
    else:
        values[option] = hostile
    with pytest.raises(ConfigError, match="control character '\\\\n'"):
        ArrayJob(**values)


def test_hostile_paths_are_quoted_and_never_in_comments(tmp_path):
    """Spaces, quotes, $(...) and ; in paths reach predict as the very same words, and nothing runs."""
    from af2cpu.scheduler.slurm import ArrayJob, array_script

    weird = tmp_path / "run $(touch PWNED); `touch PWNED2` it's"
    job = ArrayJob(weird / "q.fasta", weird / "out", 2, 2, "4G", ["relax=none"], partition="debug", python="echo")
    script = array_script(job)
    assert not [line for line in script.splitlines() if line.startswith("#") and not line.startswith("#!")
                and ("PWNED" in line and not line.startswith("#SBATCH --"))]
    assert "#SBATCH --output=\"" in script  # a value with spaces is quoted for sbatch
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == " ".join(
        ["-m", "af2cpu", "predict", str(job.fasta), "--out", str(job.out_dir), "--array-index", "1",
         "--array-count", "2", "relax=none"])
    assert not list(tmp_path.glob("PWNED*"))


def test_a_newline_in_a_batch_system_option_is_refused():
    from af2cpu.config import ClusterKind, SchedulerConfig
    from af2cpu.errors import ConfigError
    from af2cpu.scheduler.cluster import jobqueue_options

    for option in ("queue", "account", "walltime", "memory", "job_directives"):
        value = "batch\nrm -rf ~"
        config = SchedulerConfig(kind=ClusterKind.pbs, **{option: [value] if option == "job_directives" else value})
        with pytest.raises(ConfigError, match=f"scheduler.{option} .* contains the control character"):
            jobqueue_options(config)
