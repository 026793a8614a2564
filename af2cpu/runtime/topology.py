"""The CPU topology, ISA features and available memory of this machine, read from the kernel.

Everything comes from files the kernel exposes (never from `lscpu` text), under a `root` that defaults
to `/` so tests can build fake trees:

- usable CPUs: the process affinity mask (`os.sched_getaffinity`) intersected with
  `/sys/devices/system/cpu/online`;
- NUMA nodes: `/sys/devices/system/node/node*/cpulist` (a kernel without NUMA has no such folder: all
  CPUs are then on node 0);
- physical cores: `/sys/devices/system/cpu/cpu*/topology/{core_id,physical_package_id,
  thread_siblings_list}`;
- ISA features and model name: `/proc/cpuinfo`;
- memory: `/proc/meminfo` MemAvailable, bounded by the cgroup limit (v2 `memory.max`, v1
  `memory.limit_in_bytes`) minus what the cgroup already uses.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The ISA features that decide which kernels oneDNN can use (bf16 needs avx512_bf16 or amx_bf16).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")

_CGROUP_UNLIMITED = 1 << 60


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's CPU list format ("0-3,8,10-11") into sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = part.split("-", 1)
            step = 1
            if ":" in last:  # "0-15:2" strides, as cpulist_parse accepts
                last, stride = last.split(":", 1)
                step = int(stride.split("/")[0])
            cpus.update(range(int(first), int(last) + 1, step))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The inverse of :func:`parse_cpulist`: sorted CPUs as ranges ("0-3,8")."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    start = prev = None
    for cpu in ordered:
        if start is None:
            start = prev = cpu
        elif cpu == prev + 1:
            prev = cpu
        else:
            ranges.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = cpu
    if start is not None:
        ranges.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(ranges)


@dataclass(frozen=True)
class LogicalCpu:
    """One usable hardware thread and the physical core it belongs to."""

    cpu: int
    node: int
    package: int
    core_id: int
    siblings: tuple[int, ...]  # usable hardware threads of the same core, this one included


@dataclass(frozen=True)
class PhysicalCore:
    """A physical core: its usable hardware threads, first thread first."""

    node: int
    package: int
    core_id: int
    threads: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    """Usable CPUs of this process grouped by NUMA node and physical core."""

    cpus: tuple[LogicalCpu, ...]
    has_numa: bool  # False when the kernel exposes no NUMA nodes (memory binding is meaningless)

    @property
    def usable_cpus(self) -> tuple[int, ...]:
        return tuple(c.cpu for c in self.cpus)

    @property
    def nodes(self) -> tuple[int, ...]:
        """NUMA nodes with at least one usable CPU."""
        return tuple(sorted({c.node for c in self.cpus}))

    def cores(self, node: int | None = None) -> tuple[PhysicalCore, ...]:
        """Physical cores with a usable thread (on `node`, or all), in (package, core, cpu) order."""
        seen: dict[tuple[int, ...], PhysicalCore] = {}
        for c in self.cpus:
            if node is not None and c.node != node:
                continue
            if c.siblings not in seen:
                seen[c.siblings] = PhysicalCore(c.node, c.package, c.core_id, c.siblings)
        return tuple(sorted(seen.values(), key=lambda k: (k.node, k.package, k.core_id, k.threads)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def read_topology(root: str | os.PathLike = "/", affinity: Iterable[int] | None = None) -> Topology:
    """Read the usable CPUs of this process and their NUMA node and physical core.

    `affinity` defaults to this process's affinity mask; pass a set to describe another process or a
    fake tree. Offline CPUs and CPUs outside the mask are left out, also as SMT siblings.
    """
    root = Path(root)
    cpu_dir = root / "sys/devices/system/cpu"
    mask = set(os.sched_getaffinity(0) if affinity is None else affinity)
    online_text = _read(cpu_dir / "online")
    online = set(parse_cpulist(online_text)) if online_text is not None else mask
    usable = sorted(mask & online)

    node_of: dict[int, int] = {}
    node_dir = root / "sys/devices/system/node"
    node_paths = sorted(node_dir.glob("node[0-9]*")) if node_dir.is_dir() else []
    for path in node_paths:
        text = _read(path / "cpulist")
        if text is None:
            continue
        for cpu in parse_cpulist(text):
            node_of[cpu] = int(path.name[4:])

    usable_set = set(usable)
    cpus = []
    for cpu in usable:
        topo = cpu_dir / f"cpu{cpu}" / "topology"
        core_text = _read(topo / "core_id")
        package_text = _read(topo / "physical_package_id")
        siblings_text = _read(topo / "thread_siblings_list")
        siblings = parse_cpulist(siblings_text) if siblings_text else [cpu]
        cpus.append(
            LogicalCpu(
                cpu=cpu,
                node=node_of.get(cpu, 0),
                package=int(package_text) if package_text else 0,
                core_id=int(core_text) if core_text else cpu,
                siblings=tuple(s for s in siblings if s in usable_set) or (cpu,),
            )
        )
    return Topology(cpus=tuple(cpus), has_numa=bool(node_of))


def read_cpuinfo(root: str | os.PathLike = "/") -> tuple[str, frozenset[str]]:
    """The CPU model name and the feature flags of the first processor in /proc/cpuinfo."""
    text = _read(Path(root) / "proc/cpuinfo") or ""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _meminfo_kib(text: str, field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_number(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return _CGROUP_UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_stat(path: Path, field: str) -> int:
    text = _read(path) or ""
    match = re.search(rf"^{field}\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _ancestors(base: Path, relative: str) -> list[Path]:
    """`base/relative` and each parent up to `base` (a limit anywhere above also applies)."""
    parts = [p for p in relative.strip("/").split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _cgroup_folders(root: Path, controller: str) -> list[tuple[bool, Path]]:
    """(is v2, folder) for this process's cgroup of ``controller`` and each parent up to the mount root,
    from /proc/self/cgroup (a v2 line "0::/path", or a v1 line naming the controller)."""
    text = _read(root / "proc/self/cgroup") or ""
    found: list[tuple[bool, Path]] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            base = root / "sys/fs/cgroup"
            if not (base / "cgroup.controllers").exists():
                base = root / "sys/fs/cgroup/unified"
        elif controller in controllers.split(","):
            base = next((root / "sys/fs/cgroup" / name for name in (controllers, controller)
                         if (root / "sys/fs/cgroup" / name).is_dir()), root / "sys/fs/cgroup" / controller)
        else:
            continue
        found.extend((controllers == "", folder) for folder in _ancestors(base, relative))
    return found


def cgroup_memory_available(root: str | os.PathLike = "/") -> int | None:
    """Bytes this process's cgroup may still allocate, or None when no cgroup limit applies.

    The limit is the smallest `memory.max` (v2) or `memory.limit_in_bytes` (v1) on the path from the
    process's cgroup up to the mount root; usage is that cgroup's current usage less its inactive
    page cache, which the kernel reclaims before it kills anything.
    """
    best: int | None = None
    for v2, folder in _cgroup_folders(Path(root), "memory"):
        if v2:
            limit_file, usage_file, inactive = "memory.max", "memory.current", "inactive_file"
        else:
            limit_file, usage_file, inactive = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        limit = _cgroup_number(folder / limit_file)
        if limit is None or limit >= _CGROUP_UNLIMITED:
            continue
        usage = _cgroup_number(folder / usage_file) or 0
        usage -= min(usage, _cgroup_stat(folder / "memory.stat", inactive))
        free = max(0, limit - usage)
        best = free if best is None else min(best, free)
    return best


def cpus_paid(quota: float) -> int:
    """Whole CPUs a quota of ``quota`` CPUs' worth of time pays for: rounded up (1.5 -> 2), at least 1."""
    return max(1, math.ceil(quota - 1e-9))  # 1e-9: float rounding of quota/period never adds a CPU


def cgroup_cpu_limit(root: str | os.PathLike = "/") -> float | None:
    """The CPUs' worth of time this process's cgroup may use (quota / period), or None without a quota.

    The smallest of v2 `cpu.max` ("QUOTA PERIOD", "max" = none) or v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (-1 = none) on the path from the process's cgroup up to the mount root: a
    container given 1.5 CPUs on a 64-core host may run 1.5 cores' worth of threads, whatever its
    affinity mask says.
    """
    best: float | None = None
    for v2, folder in _cgroup_folders(Path(root), "cpu"):
        limit = None
        if v2:
            fields = (_read(folder / "cpu.max") or "").split()
            if len(fields) == 2 and fields[0] != "max":
                limit = int(fields[0]) / int(fields[1])
        else:
            quota = _cgroup_number(folder / "cpu.cfs_quota_us")
            period = _cgroup_number(folder / "cpu.cfs_period_us")
            if quota is not None and quota > 0 and period:
                limit = quota / period
        if limit is not None:
            best = limit if best is None else min(best, limit)
    return best


def available_memory(root: str | os.PathLike = "/") -> int:
    """Bytes this process can allocate: MemAvailable, bounded by the cgroup limit where one applies."""
    text = _read(Path(root) / "proc/meminfo") or ""
    available = _meminfo_kib(text, "MemAvailable")
    if available is None:
        available = (_meminfo_kib(text, "MemFree") or 0) + (_meminfo_kib(text, "Cached") or 0)
    limit = cgroup_memory_available(root)
    return available if limit is None else min(available, limit)


@dataclass(frozen=True)
class CpuInfo:
    """A short description of what this process may use, for `af2cpu doctor` and the planners."""

    model_name: str
    usable_cpus: tuple[int, ...]
    physical_cores: int
    numa_nodes: dict[int, tuple[int, ...]]  # node -> usable CPUs
    isa_flags: frozenset[str]  # the subset of ISA_FLAGS this CPU has
    memory_available: int  # bytes


def cpu_info(root: str | os.PathLike = "/", affinity: Iterable[int] | None = None) -> CpuInfo:
    """Read the topology, ISA features and available memory in one call."""
    topology = read_topology(root, affinity)
    model, flags = read_cpuinfo(root)
    nodes = {n: tuple(c.cpu for c in topology.cpus if c.node == n) for n in topology.nodes}
    return CpuInfo(
        model_name=model,
        usable_cpus=topology.usable_cpus,
        physical_cores=len(topology.cores()),
        numa_nodes=nodes,
        isa_flags=frozenset(flags) & frozenset(ISA_FLAGS),
        memory_available=available_memory(root),
    )
