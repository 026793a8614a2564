"""The topology reader and the instance planner, on fake /sys trees and on this machine."""

import os
from pathlib import Path

import pytest

from af2cpu.errors import ConfigError
from af2cpu.runtime.placement import plan_instances
from af2cpu.runtime.topology import (
    available_memory,
    cpu_info,
    format_cpulist,
    parse_cpulist,
    read_topology,
)


def make_machine(
    root: Path,
    sockets: int = 2,
    nodes_per_socket: int = 2,
    cores_per_node: int = 8,
    smt: int = 2,
    offline: tuple[int, ...] = (),
    numa: bool = True,
) -> Path:
    """A fake /sys (and /proc) tree numbered as Linux numbers Intel servers: first threads of all
    cores, then all second threads. Node n holds cores n*cores_per_node ... and their siblings."""
    total_cores = sockets * nodes_per_socket * cores_per_node
    cpu_dir = root / "sys/devices/system/cpu"
    cpu_dir.mkdir(parents=True)
    nodes: dict[int, list[int]] = {}
    for core in range(total_cores):
        node = core // cores_per_node
        package = node // nodes_per_socket
        threads = [core + t * total_cores for t in range(smt)]
        nodes.setdefault(node, []).extend(threads)
        for cpu in threads:
            if cpu in offline:
                continue  # the kernel removes topology/ of an offline CPU
            topo = cpu_dir / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True)
            (topo / "core_id").write_text(f"{core % (nodes_per_socket * cores_per_node)}\n")
            (topo / "physical_package_id").write_text(f"{package}\n")
            (topo / "thread_siblings_list").write_text(format_cpulist(threads) + "\n")
    online = [c for c in range(total_cores * smt) if c not in offline]
    (cpu_dir / "online").write_text(format_cpulist(online) + "\n")
    if numa:
        for node, cpus in nodes.items():
            path = root / f"sys/devices/system/node/node{node}"
            path.mkdir(parents=True)
            (path / "cpulist").write_text(format_cpulist(cpus) + "\n")
    (root / "proc").mkdir(exist_ok=True)
    return root


ALL_64 = range(64)


def node_of(cpu: int) -> int:
    return (cpu % 32) // 8


def assert_valid_plan(plan, usable):
    seen = set()
    for allotment in plan.allotments:
        assert allotment.cpus, "an instance without CPUs"
        assert not seen & set(allotment.cpus), "two instances share a CPU"
        seen |= set(allotment.cpus)
        assert {node_of(c) for c in allotment.cpus} == {allotment.memory_node}, "instance straddles nodes"
    assert seen <= set(usable)


def test_parse_cpulist_reads_ranges_strides_and_round_trips():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("0-7:2") == [0, 2, 4, 6]
    assert parse_cpulist("") == []
    assert format_cpulist([11, 0, 1, 2, 8, 10]) == "0-2,8,10-11"
    assert parse_cpulist(format_cpulist([5, 1, 2, 3, 40])) == [1, 2, 3, 5, 40]


def test_topology_of_two_sockets_four_nodes_with_smt(tmp_path):
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    assert topology.usable_cpus == tuple(range(64))
    assert topology.nodes == (0, 1, 2, 3)
    cores = topology.cores()
    assert len(cores) == 32
    assert all(len(core.threads) == 2 for core in cores)
    node2 = topology.cores(2)
    assert [core.threads for core in node2] == [(c, c + 32) for c in range(16, 24)]
    assert {core.package for core in node2} == {1}
    assert topology.has_numa


def test_default_plan_is_one_instance_per_node_on_physical_cores(tmp_path):
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    plan = plan_instances(topology)
    assert [a.cpus for a in plan.allotments] == [tuple(range(8 * n, 8 * n + 8)) for n in range(4)]
    assert [a.memory_node for a in plan.allotments] == [0, 1, 2, 3]
    assert [a.threads for a in plan.allotments] == [8] * 4


def test_threads_per_instance_use_physical_cores_before_siblings(tmp_path):
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    plan = plan_instances(topology, threads=4)
    assert plan.instances == 8
    assert all(c < 32 for a in plan.allotments for c in a.cpus), "an SMT sibling used too early"
    assert_valid_plan(plan, ALL_64)

    wide = plan_instances(topology, threads=16)  # a node has 8 cores: only with siblings
    assert wide.instances == 4
    assert wide.allotments[1].cpus == tuple(range(8, 16)) + tuple(range(40, 48))
    assert_valid_plan(wide, ALL_64)


def test_instance_counts_never_straddle_nodes_and_spread_cores_evenly(tmp_path):
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    for instances in range(1, 65):
        plan = plan_instances(topology, instances=instances)
        assert plan.instances == instances
        assert_valid_plan(plan, ALL_64)
        sizes = [a.threads for a in plan.allotments]
        if instances <= 32:
            assert all(c < 32 for a in plan.allotments for c in a.cpus), instances
            assert max(sizes) <= 2 * min(sizes), (instances, sizes)
    five = plan_instances(topology, instances=5)
    assert sorted(a.threads for a in five.allotments) == [4, 4, 8, 8, 8]
    three = plan_instances(topology, instances=3)
    assert [a.memory_node for a in three.allotments] == [0, 1, 2]


def test_impossible_requests_fail_with_the_machine_numbers(tmp_path):
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    with pytest.raises(ConfigError, match="65 instances need at least 65 CPUs; this process may use 64"):
        plan_instances(topology, instances=65)
    with pytest.raises(ConfigError, match="17 threads per instance do not fit in one NUMA node"):
        plan_instances(topology, threads=17)
    with pytest.raises(ConfigError, match="do not fit without straddling"):
        plan_instances(topology, instances=8, threads=9)
    with pytest.raises(ConfigError, match="at least 1"):
        plan_instances(topology, instances=0)


def test_affinity_subset_and_offline_cpus_are_left_out(tmp_path):
    root = make_machine(tmp_path, offline=(5, 37))
    affinity = {0, 1, 2, 3, 32, 33, 34, 35, 5, 37, 9, 41, 42} | set(range(16, 24))
    topology = read_topology(root, affinity=affinity)
    assert 5 not in topology.usable_cpus and 37 not in topology.usable_cpus
    assert topology.nodes == (0, 1, 2)
    # Core 10 is usable only through its second thread 42: still one physical core.
    assert [core.threads for core in topology.cores(1)] == [(9, 41), (42,)]
    plan = plan_instances(topology)
    assert [a.cpus for a in plan.allotments] == [(0, 1, 2, 3), (9, 42), tuple(range(16, 24))]
    assert_valid_plan(plan, affinity)


def test_kernel_without_numa_gives_node_zero_and_no_memory_binding(tmp_path):
    root = make_machine(tmp_path, sockets=1, nodes_per_socket=1, cores_per_node=4, numa=False)
    topology = read_topology(root, affinity=range(8))
    assert not topology.has_numa
    plan = plan_instances(topology, instances=2)
    assert [a.cpus for a in plan.allotments] == [(0, 1), (2, 3)]
    assert all(a.memory_node is None for a in plan.allotments)


def test_cpuinfo_flags_and_model_name(tmp_path):
    root = make_machine(tmp_path, sockets=1, nodes_per_socket=1, cores_per_node=2)
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n"
    )
    (root / "proc/meminfo").write_text("MemTotal:       1000 kB\nMemAvailable:    512 kB\n")
    info = cpu_info(root, affinity=range(4))
    assert info.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.isa_flags == {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert info.physical_cores == 2 and info.usable_cpus == (0, 1, 2, 3)
    assert info.numa_nodes == {0: (0, 1, 2, 3)}
    assert info.memory_available == 512 * 1024


def test_cgroup_v2_limit_bounds_available_memory(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemAvailable:   8388608 kB\n")  # 8 GiB
    (tmp_path / "proc/self/cgroup").write_text("0::/jobs/job42\n")
    base = tmp_path / "sys/fs/cgroup"
    (base / "jobs/job42").mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu memory\n")
    (base / "jobs/memory.max").write_text(f"{4 << 30}\n")  # a limit on the parent applies too
    (base / "jobs/memory.current").write_text(f"{1 << 30}\n")
    (base / "jobs/memory.stat").write_text(f"anon 1\ninactive_file {512 << 20}\n")
    (base / "jobs/job42/memory.max").write_text("max\n")
    assert available_memory(tmp_path) == (4 << 30) - (1 << 30) + (512 << 20)


def test_cgroup_v1_limit_bounds_available_memory(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemAvailable:   8388608 kB\n")
    (tmp_path / "proc/self/cgroup").write_text("5:cpu,cpuacct:/\n4:memory:/slurm/job7\n")
    folder = tmp_path / "sys/fs/cgroup/memory/slurm/job7"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{1 << 29}\n")
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory(tmp_path) == (2 << 30) - (1 << 29)
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory(tmp_path) == 8 << 30


def test_cpu_info_of_this_process_matches_its_affinity():
    info = cpu_info()
    assert info.usable_cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert sum(len(cpus) for cpus in info.numa_nodes.values()) == len(info.usable_cpus)
    assert 0 < info.memory_available
    assert 1 <= info.physical_cores <= len(info.usable_cpus)


def test_a_cpu_quota_bounds_the_default_plan(tmp_path):
    # A container given 2.5 CPUs on a 64-CPU, 4-node machine: one instance of 3 threads, not 4 x 8.
    topology = read_topology(make_machine(tmp_path), affinity=ALL_64)
    (allotment,) = plan_instances(topology, cpu_quota=2.5).allotments
    assert allotment.threads == 3 and {node_of(c) for c in allotment.cpus} == {allotment.memory_node}
    # A quota that covers the usable CPUs, or an explicit request, is planned as before.
    assert plan_instances(topology, cpu_quota=64.0) == plan_instances(topology)
    assert plan_instances(topology, instances=2, cpu_quota=2.5) == plan_instances(topology, instances=2)
    (whole_node,) = plan_instances(topology, cpu_quota=40.0).allotments  # capped at one node's CPUs
    assert whole_node.threads == 16
