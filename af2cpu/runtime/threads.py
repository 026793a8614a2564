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
import time
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


# How OpenMP threads wait between parallel regions (docs/benchmarks.md, "Threads on a busy machine"):
# on CPUs nobody else uses, a short spin (GOMP_SPINCOUNT) runs a pass as fast as OpenMP's default
# spinning (passive waiting measured 28-37 % slower there); on CPUs other work already uses,
# threads sleep at once (OMP_WAIT_POLICY=PASSIVE), where spinning measured 3-6x slower and the short
# spin 30-40 %. A usable CPU counts as shared when something kept it busy for more than
# SHARED_CPU_BUSY of a short look at /proc/stat (PROBE_SECONDS) before OpenMP starts.
IDLE_SPIN_COUNT = "10000"
CHOSEN_WAIT_MARK = "AF2CPU_CHOSE_OPENMP_WAIT"  # set with the wait variables af2cpu chose
# The two waits af2cpu chooses between: a short spin on free CPUs, passive waiting on shared ones.
AF2CPU_WAITS = ({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": IDLE_SPIN_COUNT},
                {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"})
SHARED_CPU_BUSY = 0.5
PROBE_SECONDS = 0.05


def openmp_environment(threads: int, cpus: Iterable[int] | None = None) -> dict[str, str]:
    """Environment variables that make OpenMP/MKL/OpenBLAS in a new process use ``threads`` threads
    and wait the way af2cpu chose; a wait variable the user set is kept as set.

    The wait policy depends on whether ``cpus``, the CPUs the process will run on, are shared at
    start (:func:`cpus_shared`): a short spin where they are not, passive waiting where they are or
    where they are not given (a process on another machine: a batch job's script).
    """
    env = {name: str(threads) for name in THREAD_VARIABLES}
    user = user_wait_variables()
    if user:
        return {**env, **user}
    # Both variables are set, so that the choice replaces a stale one inherited with an environment
    # (a Dask worker starts with its parent's variables under the ones given to it). GNU OpenMP spins
    # GOMP_SPINCOUNT iterations whatever the policy (measured: ACTIVE with 10000 runs as 10000 alone).
    spin, passive = AF2CPU_WAITS
    env.update(spin if cpus is not None and not cpus_shared(cpus) else passive)
    return {**env, CHOSEN_WAIT_MARK: "1"}


def without_chosen_wait(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without the wait variables af2cpu chose for this machine's CPUs, for a process that
    will run elsewhere (a batch job submitted from here) and choose for its own."""
    if not environ.get(CHOSEN_WAIT_MARK):
        return dict(environ)
    return {k: v for k, v in environ.items() if k not in (*WAIT_VARIABLES, CHOSEN_WAIT_MARK)}


def user_wait_variables() -> dict[str, str]:
    """The OpenMP wait variables the user set; {} where af2cpu set them (CHOSEN_WAIT_MARK: a choice made
    for one process's CPUs, inherited by the processes it starts, is not the user's for other CPUs)."""
    if os.environ.get(CHOSEN_WAIT_MARK):
        return {}
    return {name: os.environ[name] for name in WAIT_VARIABLES if os.environ.get(name)}


def cpus_shared(cpus: Iterable[int], seconds: float = PROBE_SECONDS, stat: str | os.PathLike = "/proc/stat") -> bool:
    """Whether other work keeps any of ``cpus`` busy: its busy share (not idle, not waiting for I/O;
    time stolen by other virtual machines counts as busy) over ``seconds`` above SHARED_CPU_BUSY.
    Unknown (no /proc/stat) counts as shared: passive waiting is the safe choice."""
    wanted = set(cpus)

    def read() -> dict[int, tuple[int, int]] | None:
        times = {}
        try:
            with open(stat) as lines:
                for line in lines:
                    name, *fields = line.split()
                    if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in wanted:
                        ticks = [int(f) for f in fields[:8]]  # user .. steal (guest time is in user's)
                        times[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])  # total, idle + iowait
        except (OSError, ValueError, IndexError):
            return None
        return times or None

    before = read()
    if before is None:
        return True
    time.sleep(seconds)
    after = read()
    if after is None:
        return True
    for cpu, (total, idle) in after.items():
        elapsed = total - before.get(cpu, (total, idle))[0]
        if elapsed > 0 and (elapsed - (idle - before[cpu][1])) / elapsed > SHARED_CPU_BUSY:
            return True
    return False


def thread_environment(allotment: Allotment) -> dict[str, str]:
    """:func:`openmp_environment` for an allotment's threads and CPUs."""
    return openmp_environment(allotment.threads, allotment.cpus)


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


def _affinity() -> set[int]:
    """The CPUs this process may run on (its affinity mask)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # platforms without affinity masks
        return set(range(os.cpu_count() or 1))


def usable_cpu_count(root: str | os.PathLike = "/", affinity: Iterable[int] | None = None) -> int:
    """The CPUs this process may really use: a pinned worker's allotment, else its affinity mask
    (``affinity`` in tests), bounded by its cgroup's CPU quota rounded up (at least 1)."""
    if _applied is not None:
        return _applied.threads
    count = len(set(_affinity() if affinity is None else affinity)) or 1
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
    if os.environ.get(CHOSEN_WAIT_MARK):  # af2cpu chose the wait for this process before it started
        env = {name: str(threads) for name in THREAD_VARIABLES}
    else:
        env = openmp_environment(threads, _affinity())
    for name, value in env.items():
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
