"""The stage cache: atomic writes survive kill -9, stage records skip finished work, target locks."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from af2cpu.errors import Af2CpuError
from af2cpu.io import atomic_write_bytes, file_hash
from af2cpu.scheduler.cache import LockTimeout, StageCache, TargetLock, stage_key

KILLED_WRITER = """
import sys
from af2cpu.io import atomic_write_bytes
def writer(handle):
    handle.write(b"N" * (1 << 20))
    handle.flush()
    print("half", flush=True)
    sys.stdin.read()  # blocks until killed
atomic_write_bytes(sys.argv[1], writer)
"""


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("existing", [True, False])
def test_kill_9_mid_write_leaves_no_partial_file(tmp_path, existing):
    path = tmp_path / "features.npz"
    if existing:
        path.write_bytes(b"old complete content")
    child = start(KILLED_WRITER, str(path))
    assert child.stdout.readline().strip() == "half"
    child.send_signal(signal.SIGKILL)
    child.wait()
    if existing:
        assert path.read_bytes() == b"old complete content"
    else:
        assert not path.exists()
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == (["features.npz"] if existing else [])
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_atomic_write_takes_bytes_or_a_writer_and_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_bytes(path, lambda handle: handle.write(b'{"a": 1}'))
    assert json.loads(path.read_text()) == {"a": 1}
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(path, failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def _identity(db):
    stat = db.stat()
    return {"uniref90": [[str(db), stat.st_size, stat.st_mtime_ns]]}


def test_stage_key_changes_with_each_ingredient_and_not_with_key_order(tmp_path):
    db = tmp_path / "uniref90.fasta"
    db.write_text(">a\nMKV\n")
    inputs = {"query": "ab" * 32}
    config = {"n_iter": 1, "e_value": 0.0001}
    tools = {"jackhmmer": "3.4"}
    dbs = _identity(db)
    key = stage_key("uniref90_search", inputs, config, tools, dbs)
    assert key == stage_key("uniref90_search", inputs, {"e_value": 0.0001, "n_iter": 1}, tools, dbs)
    assert len(key) == 64
    others = {
        stage_key("mgnify_search", inputs, config, tools, dbs),
        stage_key("uniref90_search", {"query": "cd" * 32}, config, tools, dbs),
        stage_key("uniref90_search", inputs, {"n_iter": 2, "e_value": 0.0001}, tools, dbs),
        stage_key("uniref90_search", inputs, config, {"jackhmmer": "3.3.2"}, dbs),
    }
    db.write_text(">a\nMKVL\n")  # a new download of the database
    others.add(stage_key("uniref90_search", inputs, config, tools, _identity(db)))
    assert key not in others and len(others) == 5


def test_finished_stage_with_same_key_is_skipped(tmp_path):
    cache = StageCache(tmp_path / "T1")
    calls = []

    def compute(folder):
        calls.append(1)
        (folder / "msas").mkdir(exist_ok=True)
        atomic_write_bytes(folder / "msas" / "uniref90_hits.sto", b"# STOCKHOLM 1.0\n//\n")
        return ["msas/uniref90_hits.sto"]

    record, cached = cache.run("uniref90_search", "k1", compute, info={"seconds": 1.5})
    assert not cached and record.outputs == ["msas/uniref90_hits.sto"]
    assert json.loads(cache.record_path("uniref90_search").read_text())["key"] == "k1"
    again, cached = cache.run("uniref90_search", "k1", compute)
    assert cached and again == record and len(calls) == 1

    cache.run("uniref90_search", "k2", compute)  # a different key recomputes
    assert len(calls) == 2
    (tmp_path / "T1/msas/uniref90_hits.sto").unlink()  # a lost output recomputes
    _, cached = cache.run("uniref90_search", "k2", compute)
    assert not cached and len(calls) == 3


def test_record_refuses_outputs_that_do_not_exist(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(Af2CpuError, match="claims outputs that do not exist"):
        cache.run("features", "k", lambda folder: ["features.npz"])
    assert cache.lookup("features", "k") is None


HOLDER = """
import sys
from af2cpu.scheduler.cache import TargetLock
lock = TargetLock(sys.argv[1])
assert lock.acquire(timeout=0)
print("held", flush=True)
sys.stdin.read()
"""


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    path = tmp_path / "T1.lock"
    child = start(HOLDER, str(path))
    assert child.stdout.readline().strip() == "held"
    lock = TargetLock(path)
    assert not lock.acquire(timeout=0), "a live holder's lock was taken"
    with pytest.raises(LockTimeout, match=f"held by pid {child.pid}"), TargetLock(path, wait=0):
        pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert json.loads(path.read_text())["pid"] == child.pid  # the dead holder left its lock
    assert lock.acquire(timeout=0)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_lock_with_an_old_heartbeat_from_another_host_is_stale(tmp_path):
    path = tmp_path / "T1.lock"
    path.write_text(json.dumps({"pid": 1, "host": "node-that-crashed", "token": "t"}))
    lock = TargetLock(path, stale_after=60)
    assert not lock.acquire(timeout=0), "a fresh lock of another host was taken"
    old = time.time() - 120
    os.utime(path, (old, old))
    assert lock.acquire(timeout=0)
    lock.release()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    path = tmp_path / "T1.lock"
    with TargetLock(path, stale_after=2.0) as held:
        time.sleep(2.5)
        assert not TargetLock(path, stale_after=2.0).acquire(timeout=0)
        assert not held.lost
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    assert not path.exists()


def test_holder_notices_when_its_lock_was_taken_over(tmp_path):
    cache = StageCache(tmp_path / "T1")
    held = cache.lock(stale_after=0.4)
    assert held.acquire(timeout=0)
    # Another shard judged the lock stale (say this process was suspended) and took it over.
    held.path.write_text(json.dumps({"pid": 1, "host": "other-node", "token": "theirs"}))
    deadline = time.monotonic() + 10
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.lost
    held.release()
    assert json.loads(held.path.read_text())["token"] == "theirs", "released a lock it no longer held"


CONTENDER = """
import sys
from pathlib import Path
from af2cpu.scheduler.cache import TargetLock
lock_path, counter, inside = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # both start together
waits = 0
for _ in range(int(sys.argv[4])):
    lock = TargetLock(lock_path)
    if not lock.acquire(timeout=0):
        waits += 1
        lock.acquire(poll=0.001)
    inside.touch(exist_ok=False)  # fails if the other process is inside too
    value = int(counter.read_text())
    counter.write_text(str(value + 1))
    inside.unlink()
    lock.release()
print(waits, flush=True)
"""


def test_two_processes_contending_never_hold_the_lock_together(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    args = [str(tmp_path / "T1.lock"), str(counter), str(tmp_path / "inside"), "150"]
    children = [start(CONTENDER, *args) for _ in range(2)]
    assert [child.stdout.readline().strip() for child in children] == ["ready", "ready"]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    waits = [int(child.communicate()[0]) for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert counter.read_text() == "300"  # no lost update: never two holders at once
    assert sum(waits) > 0, "the processes never contended; the test proved nothing"
    assert not (tmp_path / "T1.lock").exists()


def test_file_hash_is_sha256_of_content(tmp_path):
    path = tmp_path / "q.fasta"
    path.write_bytes(b">q\nMKV\n")
    assert file_hash(path) == hashlib.sha256(b">q\nMKV\n").hexdigest()


def write_single_sequence_features(path, sequence: str) -> None:
    """A real ``features.npz`` of ``sequence`` without homologues or templates (the raw features
    `af2cpu features` writes)."""
    from af2cpu.io import save_features_npz
    from af2cpu.preprocessing.features import msa_features, sequence_features, single_sequence_msa
    from af2cpu.preprocessing.templates import no_template_features

    save_features_npz(path, {**sequence_features(sequence, "T1"), **msa_features([single_sequence_msa(sequence)]),
                             **no_template_features()})


def test_inference_key_holds_the_compact_outputs_decision(tmp_path):
    from af2cpu.config import compose_config
    from af2cpu.io import npz_shapes
    from af2cpu.layout import TargetDir
    from af2cpu.model.memory import TargetShape, estimate_peak_memory, plan_options
    from af2cpu.model.presets import get_preset
    from af2cpu.preprocessing.inputs import Target
    from af2cpu.runtime.memory import GIB
    from af2cpu.scheduler.stages import StageContext, target_stages

    target = Target("T1", "", "MKVLAAGIVG" * 20)
    folder = TargetDir(tmp_path / "T1")
    folder.path.mkdir()
    write_single_sequence_features(folder.features, target.sequence)

    def configured(limit: int):
        return compose_config(["params=random", "model.names=[model_1_ptm]", "runtime.precision=fp32",
                               f"runtime.memory_limit={limit}"])

    def key(limit: int) -> str:
        cfg = configured(limit)
        (infer,) = [s for s in target_stages(cfg, "infer", target) if s.name == "infer_model_1_ptm"]
        return infer.key(StageContext(target, cfg, folder), {})

    preset = get_preset("model_1_ptm")
    shape = TargetShape.of_raw_features(preset, npz_shapes(folder.features))
    # A limit that the compact outputs fit and the full ones do not (the (L, L, bins) arrays: chunks do
    # not make them smaller).
    tight = estimate_peak_memory(shape, "fp32", compact_outputs=True).total
    assert plan_options(configured(tight).runtime, preset, shape)[0].compact_outputs
    assert not plan_options(configured(64 * GIB).runtime, preset, shape)[0].compact_outputs
    # A result made within the tight limit is not the result of a run with room for the full outputs
    # (and the reverse); a larger limit that changes nothing keeps the cached result.
    assert key(tight) != key(64 * GIB) == key(128 * GIB)


def test_inference_plans_within_its_dask_workers_share_of_the_memory(tmp_path):
    """runtime.memory_limit=auto is the whole machine's available memory; a local cluster gives each worker
    its share, and two inferences planned for all of it at once could exceed it together."""
    from distributed import Client, LocalCluster

    from af2cpu.config import compose_config
    from af2cpu.io import npz_shapes
    from af2cpu.model.memory import MemoryPlanError, TargetShape, estimate_peak_memory
    from af2cpu.model.presets import get_preset
    from af2cpu.runtime.memory import GIB, available_memory
    from af2cpu.scheduler.stages import _infer_options, memory_limit

    features = tmp_path / "features.npz"
    write_single_sequence_features(features, "MKVLAAGIVG" * 20)
    preset = get_preset("model_1_ptm")
    cfg = compose_config(["params=random", "model.names=[model_1_ptm]", "runtime.precision=fp32"])
    shape = TargetShape.of_raw_features(preset, npz_shapes(features))
    # A share the compact outputs fit and the full ones do not; then one nothing fits.
    share = estimate_peak_memory(shape, "fp32", compact_outputs=True).total
    assert share < available_memory()
    outside = _infer_options(cfg, preset, features)[0]
    assert memory_limit(cfg) > share and not outside.compact_outputs  # outside a worker: the machine's memory

    def in_worker(cfg, limit: int):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit=limit,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            return client.submit(lambda: (memory_limit(cfg), _infer_options(cfg, preset, features)[0]),
                                 pure=False).result()

    planned, options = in_worker(cfg, share)
    assert planned == share and options.compact_outputs
    # An explicit limit is what was asked, in a worker too.
    explicit = compose_config(["params=random", "model.names=[model_1_ptm]", "runtime.precision=fp32",
                               f"runtime.memory_limit={64 * GIB}"])
    assert in_worker(explicit, share)[0] == 64 * GIB
    # A share nothing fits says so, and what gives each worker more.
    with pytest.raises(MemoryPlanError, match=r"share of the memory: fewer workers \(scheduler.n_workers\)"):
        in_worker(cfg, 64 << 20)
