"""The one place that applies a CPU allotment to the current process, and thread counts.

A Dask worker calls :func:`apply_allotment` once at start (see `af2cpu.scheduler.cluster`). It pins
every thread of the process to the allotment's CPUs, binds its memory to the allotment's NUMA node,
sets PyTorch's intra-op thread count and the OpenMP/MKL/OpenBLAS variables that libraries started later
read, and returns the thread counts the external tools should be given. Nothing else in af2cpu sets
affinity or memory placement. Programs the worker starts (the search tools) inherit both: the kernel
keeps a process's affinity mask and NUMA memory policy across fork and exec, so no numactl is needed.

Memory placement: :func:`bind_memory` gives the calling thread, and the threads it starts later, the
policy `numactl --membind` gives a process (the set_mempolicy system call).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from af2cpu.runtime.placement import Allotment
from af2cpu.runtime.topology import cgroup_cpu_limit, cpus_paid

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_applied: Allotment | None = None

# set_mempolicy(2) system call numbers; the policy MPOL_BIND is 2 on every architecture.
_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 270}
_MPOL_BIND = 2


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


# OpenMP's waiting between parallel regions: GNU OpenMP (PyTorch's on Linux) and Intel's runtime read these.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def openmp_environment(threads: int) -> dict[str, str]:
    """Environment variables that make OpenMP/MKL/OpenBLAS in a new process use ``threads`` threads
    and wait the way af2cpu chose; a wait variable the user set is kept as set.

    OpenMP threads sleep instead of spinning between parallel regions (OMP_WAIT_POLICY=PASSIVE):
    measured with `af2cpu bench --contention` on a shared 2-core machine (docs/benchmarks.md), spinning
    threads made a pass several times slower beside one busy process, while passive waiting costs
    little on an idle machine.
    """
    env = {name: str(threads) for name in THREAD_VARIABLES}
    if not any(os.environ.get(name) for name in WAIT_VARIABLES):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.update({name: os.environ[name] for name in WAIT_VARIABLES if os.environ.get(name)})
    return env


def thread_environment(allotment: Allotment) -> dict[str, str]:
    """:func:`openmp_environment` for an allotment's threads."""
    return openmp_environment(allotment.threads)


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


def bind_memory(node: int) -> bool:
    """Allocate the memory of this thread and of the threads it starts on NUMA node `node` only.

    Returns False where the system call is unknown (an architecture not listed); raises OSError when
    the kernel refuses (a node that does not exist, or one outside this process's cpuset).
    """
    number = _SET_MEMPOLICY.get(platform.machine())
    if number is None:
        return False
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    mask = (ctypes.c_ulong * (node // bits + 1))()
    mask[node // bits] = 1 << (node % bits)
    libc = ctypes.CDLL(None, use_errno=True)
    # The kernel reads maxnode - 1 bits of the mask.
    if libc.syscall(number, _MPOL_BIND, mask, ctypes.c_ulong(len(mask) * bits + 1)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot bind memory to NUMA node {node}: {os.strerror(error)}")
    return True


def apply_allotment(allotment: Allotment) -> ToolThreads:
    """Pin this process to the allotment's CPUs (and memory node), and set every thread count."""
    import torch  # deferred: only worker processes (which run models) apply an allotment

    global _applied
    _pin_all_threads(allotment.cpus)
    if allotment.memory_node is not None:
        bind_memory(allotment.memory_node)
    os.environ.update(thread_environment(allotment))
    torch.set_num_threads(allotment.threads)
    _applied = allotment
    return tool_threads(allotment)


def current_allotment() -> Allotment | None:
    """The allotment applied to this process (a pinned Dask worker's), or None if none was."""
    return _applied


def usable_cpu_count(root: str | os.PathLike = "/", affinity: Iterable[int] | None = None) -> int:
    """The CPUs this process may really use: a pinned worker's allotment, else its affinity mask
    (``affinity`` in tests), bounded by its cgroup's CPU quota rounded up (at least 1)."""
    if _applied is not None:
        return _applied.threads
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # platforms without affinity masks
            affinity = range(os.cpu_count() or 1)
    count = len(set(affinity)) or 1
    quota = cgroup_cpu_limit(root)
    return count if quota is None else min(count, cpus_paid(quota))


def prepare_process(threads: int | None = None) -> int:
    """The one place a process (the CLI, the Python API, `bench`) gets its threads: the OpenMP/MKL/
    OpenBLAS variables of :func:`openmp_environment` for ``threads`` (default: every usable CPU), and
    torch's intra-op threads. Returns the thread count.

    OpenMP reads its variables once, when its runtime loads (when torch is first imported): called
    before that, the wait policy applies to this process; called after, only to the processes it starts
    (torch's thread count is set either way). A variable the user set is kept; an explicit ``threads``
    replaces the thread counts. Dask workers get the same variables before they start
    (af2cpu.scheduler.cluster).
    """
    explicit = threads is not None
    threads = threads if explicit else usable_cpu_count()
    for name, value in openmp_environment(threads).items():
        if explicit and name in THREAD_VARIABLES:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return int(os.environ["OMP_NUM_THREADS"])


def threads_for(requested: int) -> int:
    """``requested`` threads (``runtime.threads``, ``relax.threads``, ``search.cpus``), or with 0 every
    CPU this process may use."""
    return requested if requested > 0 else usable_cpu_count()
