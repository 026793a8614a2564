"""Real Dask workers pinned to their planned cores; attaching to a dead scheduler fails clearly."""

import os
import socket

import pytest

from af2cpu.config import SchedulerConfig
from af2cpu.errors import Af2CpuError
from af2cpu.runtime.placement import plan_instances
from af2cpu.runtime.threads import AF2CPU_WAITS, WAIT_VARIABLES, user_wait_variables
from af2cpu.runtime.topology import read_topology
from af2cpu.scheduler.cluster import start_cluster


def report():
    """What a worker process looks like from inside (runs on the worker)."""
    import torch

    from af2cpu.runtime.threads import current_allotment

    return {
        "affinity": sorted(os.sched_getaffinity(0)),
        "all_threads": sorted(
            {tuple(sorted(os.sched_getaffinity(int(tid)))) for tid in os.listdir("/proc/self/task")}
        ),
        "torch": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "mkl": os.environ.get("MKL_NUM_THREADS"),
        "applied": current_allotment().cpus,
        "pid": os.getpid(),
        # The environment the process started with: what the OpenMP runtime read, whenever torch was imported.
        "initial_env": dict(item.split("=", 1) for item in open("/proc/self/environ").read().split("\0") if "=" in item),
        "policies": sorted({line.split()[1] for line in open("/proc/self/numa_maps")}),
    }


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="needs exactly two usable CPUs")
@pytest.mark.parametrize("config, model_threads", [(SchedulerConfig(n_workers=2), 0), (SchedulerConfig(), 1)],
                         ids=["n_workers=2", "runtime.threads=1"])
def test_two_one_core_workers_are_pinned_as_planned(config, model_threads):
    # Two workers are asked for, or one model instance of one thread per worker (runtime.threads=1).
    plan = plan_instances(read_topology(), instances=2)
    assert [a.threads for a in plan.allotments] == [1, 1]
    memory = 1 << 30
    with start_cluster(config, memory_limit=2 * memory, model_threads=model_threads) as handle:
        assert handle.plan == plan
        client = handle.client
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        by_cpus = {}
        for address, info in workers.items():
            assert info["resources"] == {"cpus": 1, "memory": memory}
            seen = client.run(report, workers=[address])[address]
            # The same, from a task running in the worker's thread pool.
            in_task = client.submit(report, workers=[address], resources={"cpus": 1}, pure=False).result()
            assert in_task["affinity"] == seen["affinity"] and in_task["torch"] == 1
            by_cpus[tuple(seen["affinity"])] = seen
        assert sorted(by_cpus) == sorted(a.cpus for a in plan.allotments)
        for cpus, seen in by_cpus.items():
            assert seen["all_threads"] == [cpus], "a thread of the worker escaped its cores"
            assert seen["torch"] == 1 and seen["omp"] == "1" and seen["mkl"] == "1"
            assert seen["initial_env"]["OMP_NUM_THREADS"] == "1"
            # The wait af2cpu chose for the worker's CPUs (or the user's) was there before the worker started.
            wait = {k: v for k, v in seen["initial_env"].items() if k in WAIT_VARIABLES}
            assert wait in ([user_wait_variables()] if user_wait_variables() else AF2CPU_WAITS)
            assert tuple(seen["applied"]) == cpus
            assert seen["pid"] != os.getpid()
            node = next(a.memory_node for a in plan.allotments if a.cpus == cpus)
            if node is not None:
                assert f"bind:{node}" in seen["policies"] and "default" not in seen["policies"]
        assert handle.dashboard_link is None or handle.dashboard_link.startswith("http")
    assert os.sched_getaffinity(0) == set(read_topology().usable_cpus), "the client process was pinned"


def test_dead_scheduler_address_is_a_clear_error():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = SchedulerConfig(address=f"tcp://127.0.0.1:{port}", connect_timeout=2)
    with pytest.raises(Af2CpuError, match=f"could not reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        start_cluster(config)


def test_slurm_without_sbatch_says_what_to_do(monkeypatch):
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if not os.path.exists(os.path.join(p, "sbatch")))
    monkeypatch.setenv("PATH", path)
    with pytest.raises(Af2CpuError, match="sbatch, which is not on PATH"):
        start_cluster(SchedulerConfig(kind="slurm"))
