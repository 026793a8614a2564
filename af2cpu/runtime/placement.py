"""Split the usable cores into instances (one per Dask worker) for a batch of targets.

Rules, in order:
1. An instance never straddles NUMA nodes: its cores and its memory are on one node.
2. Physical cores before SMT siblings: an instance gets one hardware thread per physical core, and a
   second thread of a core only when the request cannot be met with physical cores alone.
3. The request is a number of instances, or a number of threads per instance, or both; with neither,
   one instance per NUMA node uses every physical core of the node.
4. A CPU quota (a container's or a batch job's cgroup `cpu.max`) smaller than the usable CPUs bounds
   the whole plan: with neither request, one instance of as many threads as the quota pays for
   (rounded up; at most one node's CPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from af2cpu.errors import ConfigError
from af2cpu.runtime.topology import Topology, cpus_paid, format_cpulist


@dataclass(frozen=True)
class Allotment:
    """The CPUs, thread count and memory node of one instance."""

    cpus: tuple[int, ...]
    memory_node: int | None  # None where the kernel exposes no NUMA nodes

    @property
    def threads(self) -> int:
        return len(self.cpus)

    def describe(self) -> str:
        node = "" if self.memory_node is None else f" on node {self.memory_node}"
        return f"{self.threads} thread(s) on CPUs {format_cpulist(self.cpus)}{node}"


@dataclass(frozen=True)
class Plan:
    """Instances for a batch; `allotments[i]` belongs to worker i."""

    allotments: tuple[Allotment, ...]

    @property
    def instances(self) -> int:
        return len(self.allotments)


def _slots(topology: Topology, node: int) -> tuple[list[int], list[int]]:
    """(first thread of each physical core, then the remaining SMT threads) on `node`."""
    cores = topology.cores(node)
    physical = [core.threads[0] for core in cores]
    depth = max((len(core.threads) for core in cores), default=0)
    smt = [core.threads[i] for i in range(1, depth) for core in cores if len(core.threads) > i]
    return physical, smt


def _split(cpus: list[int], parts: int) -> list[tuple[int, ...]]:
    """`cpus` in `parts` contiguous groups whose sizes differ by at most one."""
    size, extra = divmod(len(cpus), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(tuple(cpus[start:end]))
        start = end
    return groups


def plan_instances(
    topology: Topology, instances: int | None = None, threads: int | None = None,
    cpu_quota: float | None = None,
) -> Plan:
    """Plan `instances` workers, or workers of `threads` threads each, on the usable cores, within
    `cpu_quota` CPUs' worth of time if one applies (af2cpu.runtime.topology.cgroup_cpu_limit).

    Raises ConfigError, with the machine's numbers, when the request cannot be met.
    """
    paid = None if cpu_quota is None else cpus_paid(cpu_quota)
    if paid is not None and instances is None and threads is None and paid < len(topology.usable_cpus):
        largest_node = max((sum(c.node == n for c in topology.cpus) for n in topology.nodes), default=1)
        instances, threads = 1, min(paid, largest_node)
    if instances is not None and instances < 1:
        raise ConfigError(f"the number of instances must be at least 1, not {instances}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads per instance must be at least 1, not {threads}")
    nodes = topology.nodes
    if not nodes:
        raise ConfigError("no usable CPU: the affinity mask and the online CPUs do not overlap")
    slots = {node: _slots(topology, node) for node in nodes}
    physical = {node: len(slots[node][0]) for node in nodes}
    logical = {node: len(slots[node][0]) + len(slots[node][1]) for node in nodes}
    summary = ", ".join(f"node {n}: {physical[n]} cores / {logical[n]} threads" for n in nodes)

    if instances is None and threads is None:
        count = {node: 1 for node in nodes}
    elif instances is None:
        count = {node: physical[node] // threads for node in nodes}
        if not any(count.values()):
            count = {node: logical[node] // threads for node in nodes}
        if not any(count.values()):
            raise ConfigError(
                f"{threads} threads per instance do not fit in one NUMA node ({summary}); "
                "ask for fewer threads per instance"
            )
    else:
        if instances > sum(logical.values()):
            raise ConfigError(
                f"{instances} instances need at least {instances} CPUs; this process may use "
                f"{sum(logical.values())} ({summary})"
            )
        count = {node: 0 for node in nodes}
        for _ in range(instances):
            # The node whose instances would keep the most cores each; physical cores count first.
            best = max(
                nodes,
                key=lambda n: (
                    physical[n] / (count[n] + 1),
                    logical[n] / (count[n] + 1),
                    -n,
                ),
            )
            count[best] += 1
        if threads is not None:
            for node in nodes:
                if count[node] * threads > logical[node]:
                    raise ConfigError(
                        f"{instances} instances of {threads} threads do not fit without straddling "
                        f"NUMA nodes ({summary})"
                    )

    allotments = []
    for node in nodes:
        n = count[node]
        if n == 0:
            continue
        first, smt = slots[node]
        if threads is not None:
            ordered = first + smt
            groups = [tuple(ordered[i * threads : (i + 1) * threads]) for i in range(n)]
        else:
            groups = _split(first if n <= len(first) else first + smt, n)
        memory_node = node if topology.has_numa else None
        allotments.extend(Allotment(cpus=tuple(sorted(g)), memory_node=memory_node) for g in groups)
    return Plan(allotments=tuple(allotments))
