"""The one place that applies an allotment: affinity of every thread, thread counts, memory node."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.threads import bind_memory, thread_environment, threads_for, tool_threads


def test_thread_environment_and_tool_threads_match_the_allotment():
    allotment = Allotment(cpus=(8, 9, 10, 12), memory_node=1)
    env = thread_environment(allotment)
    assert {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"} == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
    }
    assert env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
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
