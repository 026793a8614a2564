"""The one place that applies an allotment: affinity of every thread, thread counts, memory node."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.threads import bind_memory, numactl_command, thread_environment, tool_threads


def test_numactl_command_binds_memory_node_and_cpus():
    allotment = Allotment(cpus=(8, 9, 10, 12), memory_node=1)
    assert numactl_command(allotment, ["hhblits", "-i", "q.fasta"], numactl="/usr/bin/numactl") == [
        "/usr/bin/numactl",
        "--membind=1",
        "--physcpubind=8-10,12",
        "hhblits",
        "-i",
        "q.fasta",
    ]
    env = thread_environment(allotment)
    assert {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"} == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
    }
    assert env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    assert tool_threads(allotment).hmmer == 4


APPLY = """
import json, os, sys, threading, torch
from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.threads import apply_allotment
ready, done = threading.Event(), threading.Event()
def early():
    ready.set(); done.wait()
thread = threading.Thread(target=early); thread.start(); ready.wait()
cpus, node = tuple(json.loads(sys.argv[1])), json.loads(sys.argv[2])
tools = apply_allotment(Allotment(cpus=cpus, memory_node=node))
masks = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}
done.set(); thread.join()
policies = sorted({line.split()[1] for line in open("/proc/self/numa_maps")})
print(json.dumps({"masks": masks, "policies": policies, "torch": torch.get_num_threads(),
                  "omp": os.environ["OMP_NUM_THREADS"], "hmmer": tools.hmmer, "openmm": tools.openmm}))
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


@pytest.mark.skipif(not Path("/sys/devices/system/node/node0").exists(), reason="no NUMA nodes exposed")
def test_apply_allotment_binds_memory_to_its_node():
    cpu = min(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", APPLY, json.dumps([cpu]), "0"], capture_output=True, text=True, check=True
    )
    policies = json.loads(out.stdout)["policies"]
    # Mappings without a policy of their own show the thread's; a library may set its own ("local").
    assert "bind:0" in policies and "default" not in policies


def test_binding_to_a_node_that_does_not_exist_is_refused():
    with pytest.raises(OSError, match="cannot bind memory to NUMA node 1000"):
        bind_memory(1000)
