"""The one place that applies an allotment: affinity of every thread, thread counts, memory node."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.threads import (
    AF2CPU_WAITS,
    CHOSEN_WAIT_MARK,
    THREAD_VARIABLES,
    WAIT_VARIABLES,
    bind_memory,
    openmp_environment,
    thread_environment,
    threads_for,
    tool_threads,
    usable_cpu_count,
    user_wait_variables,
)
from af2cpu.runtime.topology import cgroup_cpu_limit


def test_thread_environment_and_tool_threads_match_the_allotment():
    allotment = Allotment(cpus=(8, 9, 10, 12), memory_node=1)
    env = thread_environment(allotment)
    assert {k: v for k, v in env.items() if k in THREAD_VARIABLES} == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
    }
    # One of af2cpu's two waits for the allotment's CPUs (or the user's choice).
    assert {k: v for k, v in env.items() if k in WAIT_VARIABLES} in (
        [user_wait_variables()] if user_wait_variables() else AF2CPU_WAITS)
    assert tool_threads(allotment).hmmer == 4


APPLY = """
import json, os, subprocess, sys, threading, torch
from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.threads import apply_allotment
CHILD = (
    "import json, os; print(json.dumps({'mask': sorted(os.sched_getaffinity(0)), "
    "'policies': sorted({line.split()[1] for line in open('/proc/self/numa_maps')})}))"
)
ready, done = threading.Event(), threading.Event()
def early():
    ready.set(); done.wait()
thread = threading.Thread(target=early); thread.start(); ready.wait()
cpus, node = tuple(json.loads(sys.argv[1])), json.loads(sys.argv[2])
tools = apply_allotment(Allotment(cpus=cpus, memory_node=node))
masks = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}
done.set(); thread.join()
policies = sorted({line.split()[1] for line in open("/proc/self/numa_maps")})
# A search tool started now: what the kernel gives it of the allotment (no numactl involved).
child = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout)
print(json.dumps({"masks": masks, "policies": policies, "torch": torch.get_num_threads(),
                  "omp": os.environ["OMP_NUM_THREADS"], "hmmer": tools.hmmer, "openmm": tools.openmm,
                  "child": child}))
"""


def test_apply_allotment_pins_threads_that_already_exist():
    cpu = max(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", APPLY, json.dumps([cpu]), "null"], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert len(result["masks"]) >= 2
    assert all(mask == [cpu] for mask in result["masks"].values())
    assert result["torch"] == 1 and result["omp"] == "1"
    assert result["hmmer"] == 1 and result["openmm"] == 1
    assert not any(p.startswith("bind") for p in result["policies"])
    assert result["child"]["mask"] == [cpu]  # tools started by a pinned worker run on its CPUs


def test_threads_for_takes_the_request_or_every_usable_cpu():
    assert threads_for(3) == 3
    assert threads_for(0) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not Path("/sys/devices/system/node/node0").exists(), reason="no NUMA nodes exposed")
def test_apply_allotment_binds_memory_to_its_node():
    cpu = min(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", APPLY, json.dumps([cpu]), "0"], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    # Mappings without a policy of their own show the thread's; a library may set its own ("local").
    assert "bind:0" in result["policies"] and "default" not in result["policies"]
    assert "bind:0" in result["child"]["policies"]  # inherited by the tools the worker starts


def test_binding_to_a_node_that_does_not_exist_is_refused():
    with pytest.raises(OSError, match="cannot bind memory to NUMA node 1000"):
        bind_memory(1000)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_cpu_quota_bounds_the_threads(tmp_path):
    # A SLURM step inside a job given 1.5 CPUs on an 8-CPU mask: the job's quota applies to the step.
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/job/step\n", "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
                            "sys/fs/cgroup/job/cpu.max": "150000 100000\n",
                            "sys/fs/cgroup/job/step/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) == pytest.approx(1.5)
    assert usable_cpu_count(root, affinity=range(8)) == 2
    assert usable_cpu_count(root, affinity=[3]) == 1


def test_cgroup_v1_cpu_quota_and_no_quota(tmp_path):
    root = _tree(tmp_path / "v1", {"proc/self/cgroup": "5:memory:/x\n4:cpu,cpuacct:/slurm/job1\n",
                                   "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "300000\n",
                                   "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000\n",
                                   "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                   "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root) == pytest.approx(3.0)
    assert usable_cpu_count(root, affinity=range(16)) == 3
    assert usable_cpu_count(root, affinity=range(2)) == 2  # the mask is the smaller bound here
    unlimited = _tree(tmp_path / "none", {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cgroup.controllers": "",
                                          "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(unlimited) is None and cgroup_cpu_limit(tmp_path / "absent") is None
    assert usable_cpu_count(unlimited, affinity=range(6)) == 6


def test_wait_policy_spins_briefly_on_idle_cpus_and_sleeps_on_shared_ones(monkeypatch):
    from af2cpu.runtime import threads

    for name in WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(threads.CHOSEN_WAIT_MARK, raising=False)
    counts = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
              threads.CHOSEN_WAIT_MARK: "1"}  # af2cpu's choice, marked as not the user's
    # CPUs not given (a process on another machine, a batch job's script): passive, the safe choice.
    passive = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert openmp_environment(3) == {**counts, **passive}
    monkeypatch.setattr(threads, "cpus_shared", lambda cpus: False)
    assert openmp_environment(3, [0, 1, 2]) == {**counts, "OMP_WAIT_POLICY": "ACTIVE",
                                                "GOMP_SPINCOUNT": threads.IDLE_SPIN_COUNT}
    monkeypatch.setattr(threads, "cpus_shared", lambda cpus: True)
    assert openmp_environment(3, [0, 1, 2]) == {**counts, **passive}
    monkeypatch.setenv("GOMP_SPINCOUNT", "5000")  # the user's choice is kept, whatever the CPUs
    env = openmp_environment(3, [0, 1, 2])
    assert env["GOMP_SPINCOUNT"] == "5000" and "OMP_WAIT_POLICY" not in env and threads.CHOSEN_WAIT_MARK not in env
    # af2cpu's own earlier choice (marked) is not the user's: chosen again for these CPUs; and it is
    # left out of the environment of a batch job that will run elsewhere.
    monkeypatch.setenv(threads.CHOSEN_WAIT_MARK, "1")
    assert openmp_environment(3, [0, 1, 2])["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.without_chosen_wait({"GOMP_SPINCOUNT": "5000", threads.CHOSEN_WAIT_MARK: "1", "PATH": "/bin"}) == {
        "PATH": "/bin"}
    assert threads.without_chosen_wait({"GOMP_SPINCOUNT": "5000", "PATH": "/bin"}) == {
        "GOMP_SPINCOUNT": "5000", "PATH": "/bin"}


def _stat(ticks: dict[int, tuple[int, int]]) -> str:
    """/proc/stat with the given (busy user ticks, idle ticks) per CPU."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in ticks.items()]
    return "\n".join(lines + ["intr 0", "ctxt 0"]) + "\n"


def test_cpus_shared_reads_each_cpus_busy_share(tmp_path, monkeypatch):
    from af2cpu.runtime import threads

    stat = tmp_path / "stat"
    snapshots = iter([{0: (110, 200), 1: (500, 390), 2: (100, 300)},
                      {0: (110, 200), 1: (530, 390), 2: (100, 300)}])

    def look(seconds):  # the second snapshot appears while the probe waits
        stat.write_text(_stat(next(snapshots)))

    stat.write_text(_stat({0: (100, 190), 1: (499, 380), 2: (100, 290)}))
    monkeypatch.setattr(threads.time, "sleep", look)
    # CPU 0: 10 of 20 ticks busy (not above half); CPU 2: idle; CPU 1: 31 of 41 busy.
    assert not threads.cpus_shared([0, 2], stat=stat)
    stat.write_text(_stat({0: (100, 190), 1: (499, 380), 2: (100, 290)}))
    assert threads.cpus_shared([1, 2], stat=stat)
    # Without /proc/stat nothing is known: shared, so threads wait passively.
    assert threads.cpus_shared([0], stat=tmp_path / "absent")


def test_a_cpu_kept_busy_by_another_process_counts_as_shared():
    from af2cpu.runtime.threads import cpus_shared

    cpu = max(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"])
    try:
        time.sleep(1.0)
        assert cpus_shared([cpu], seconds=0.5)
    finally:
        busy.kill()
        busy.wait()


PREPARE = """
import json, os, sys
from af2cpu.runtime.threads import prepare_process, usable_cpu_count
before = "torch" in sys.modules
n = prepare_process(json.loads(sys.argv[1]))
import torch
print(json.dumps({"n": n, "torch": torch.get_num_threads(), "usable": usable_cpu_count(), "before": before,
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}}))
"""


@pytest.mark.parametrize("threads, user, expected_policy", [(None, {}, "PASSIVE"),
                                                            (1, {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_prepare_process_sets_threads_and_wait_policy_before_torch(threads, user, expected_policy):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", CHOSEN_WAIT_MARK, *WAIT_VARIABLES)}
    # The process runs on one CPU that another process keeps busy: its threads must wait passively.
    cpu = max(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"])
    try:
        time.sleep(1.0)
        out = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(threads)], env={**env, **user},
                             capture_output=True, text=True, check=True,
                             preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    finally:
        busy.kill()
        busy.wait()
    result = json.loads(out.stdout)
    expected = threads or result["usable"]
    assert not result["before"], "importing the threads module must not import torch"
    assert result["n"] == result["torch"] == expected
    assert result["env"] == {"OMP_NUM_THREADS": str(expected), "OMP_WAIT_POLICY": expected_policy,
                             "MKL_NUM_THREADS": str(expected)}


def test_contention_variants_and_their_ratios(monkeypatch):
    from af2cpu.bench.contention import VARIANT_NAMES, _child_env, summarise, variants

    monkeypatch.delenv(CHOSEN_WAIT_MARK, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's setting reaches no variant but "chosen"
    chosen = variants(2, reference=True)
    assert set(chosen) == {"chosen", "spin", "passive", "spin10k", "spin1k", "spin100", "fewer", "reference"}
    assert set(chosen) == set(VARIANT_NAMES)
    assert "OMP_WAIT_POLICY" not in _child_env(*chosen["spin"]) and _child_env(*chosen["fewer"])["OMP_NUM_THREADS"] == "1"
    assert _child_env(*chosen["passive"])["OMP_WAIT_POLICY"] == "PASSIVE"
    assert _child_env(*chosen["chosen"])["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "fewer" not in variants(1, reference=False)
    rows = [{"round": r, "condition": c, "variant": v, "pass_s": s}
            for r, scale in ((0, 1.0), (1, 2.0))  # round 1: the whole machine twice as slow
            for c, v, s in (("idle", "spin", 2.0), ("busy", "spin", 6.0), ("idle", "reference", 3.0),
                            ("busy", "reference", 4.5), ("idle", "passive", 2.5), ("busy", "passive", 3.0))
            for s in [s * scale]]
    summary = summarise(rows)
    # Ratios within a round, so the machine's change of speed between rounds cancels.
    assert summary["spin"]["busy_over_idle"] == 3.0 and summary["passive"]["busy_over_idle"] == 1.2
    assert summary["spin"]["idle_vs_reference"] == 1.5 and summary["spin"]["busy_vs_reference"] == 0.75
    assert summary["passive"]["busy_vs_reference"] == 1.5 and summary["reference"]["busy_vs_reference"] == 1.0
