"""The one place that applies a CPU allotment to the current process.

A Dask worker calls :func:`apply_allotment` once at start (see `af2cpu.scheduler.cluster`); the CLI
calls it for a one-process run. It pins every thread of the process to the allotment's CPUs, sets
PyTorch's intra-op thread count and the OpenMP/MKL/OpenBLAS variables that libraries started later
read, and returns the thread counts the external tools should be given. Nothing else in af2cpu sets
affinity or thread counts.

Memory placement: a process pinned to one node's CPUs gets node-local memory from the kernel's default
(local) policy; subprocesses can be bound strictly with :func:`numactl_command`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.topology import format_cpulist

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_applied: Allotment | None = None


@dataclass(frozen=True)
class ToolThreads:
    """Thread counts matching one allotment, for each program that runs inside it."""

    torch: int
    hmmer: int  # jackhmmer / hmmsearch `--cpu`
    hhsuite: int  # hhblits / hhsearch `-cpu`
    openmm: int  # OpenMM CPU platform property "Threads"


def tool_threads(allotment: Allotment) -> ToolThreads:
    """The thread counts for an allotment, without changing the process."""
    n = allotment.threads
    return ToolThreads(torch=n, hmmer=n, hhsuite=n, openmm=n)


def thread_environment(allotment: Allotment) -> dict[str, str]:
    """Environment variables that make OpenMP/MKL/OpenBLAS in a new process use the allotment."""
    return {name: str(allotment.threads) for name in THREAD_VARIABLES}


def _pin_all_threads(cpus: Sequence[int]) -> None:
    # sched_setaffinity(0) pins only the calling thread; threads that exist already (an event loop,
    # a thread pool) keep their mask unless each is pinned by its id.
    os.sched_setaffinity(0, cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass  # the thread ended between listing and pinning


def apply_allotment(allotment: Allotment) -> ToolThreads:
    """Pin this process to the allotment and set every thread count to match it."""
    import torch

    global _applied
    _pin_all_threads(allotment.cpus)
    os.environ.update(thread_environment(allotment))
    torch.set_num_threads(allotment.threads)
    _applied = allotment
    return tool_threads(allotment)


def current_allotment() -> Allotment | None:
    """The allotment applied to this process (a pinned Dask worker's), or None if none was."""
    return _applied


def numactl_command(
    allotment: Allotment, command: Sequence[str], numactl: str | None = None
) -> list[str]:
    """`command` prefixed with `numactl --membind=N --physcpubind=CPUS` where numactl is installed.

    Without numactl, or on a machine without NUMA nodes, the command is returned unchanged (the
    process still inherits the caller's affinity).
    """
    numactl = numactl or shutil.which("numactl")
    if numactl is None or allotment.memory_node is None:
        return list(command)
    return [
        numactl,
        f"--membind={allotment.memory_node}",
        f"--physcpubind={format_cpulist(allotment.cpus)}",
        *command,
    ]
