"""Dask clusters whose workers are pinned to the cores the placement plan gives them.

`start_cluster` either attaches to a running scheduler (`scheduler.address`) or starts a local
scheduler and one `distributed.Nanny` worker process per planned instance. Each worker:

- starts with OMP/MKL/OpenBLAS thread variables matching its allotment (set by its nanny, before
  PyTorch or any BLAS is imported);
- applies its allotment in `PinToAllotment.setup` (affinity of every thread, memory bound to its
  NUMA node, `torch.set_num_threads`) through `af2cpu.runtime.threads.apply_allotment`, the one place
  that does so;
- advertises resources `{"cpus": n, "memory": bytes}`, so tasks that declare what they need
  (`resources={"cpus": 4}`) never oversubscribe a worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from distributed import Client, Nanny, Scheduler, SpecCluster
from distributed.diagnostics.plugin import WorkerPlugin

from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.runtime.placement import Allotment, Plan, plan_instances
from af2cpu.runtime.threads import apply_allotment, thread_environment
from af2cpu.runtime.topology import available_memory, read_topology
from af2cpu.scheduler.config import ClusterKind, SchedulerConfig

log = logging.getLogger(__name__)


class PinToAllotment(WorkerPlugin):
    """Applies one allotment to the worker process it is installed in."""

    name = "af2cpu-pin"

    def __init__(self, allotment: Allotment):
        self.allotment = allotment

    def setup(self, worker) -> None:
        apply_allotment(self.allotment)


def worker_specs(plan: Plan, memory_per_worker: int) -> dict[str, dict]:
    """SpecCluster worker specifications, one pinned Nanny per allotment of `plan`."""
    specs = {}
    for i, allotment in enumerate(plan.allotments):
        log.info("worker af2cpu-%d: %s", i, allotment.describe())
        specs[f"af2cpu-{i}"] = {
            "cls": Nanny,
            "options": {
                "nthreads": allotment.threads,
                "memory_limit": memory_per_worker,
                "resources": {"cpus": allotment.threads, "memory": memory_per_worker},
                "env": thread_environment(allotment),
                "plugins": [PinToAllotment(allotment)],
                "silence_logs": logging.WARNING,
            },
        }
    return specs


@dataclass
class ClusterHandle:
    """A client and, when af2cpu started it, the cluster; closing the handle stops what it started."""

    client: Client
    cluster: SpecCluster | None
    plan: Plan | None
    dashboard_link: str | None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach(address: str, timeout: float) -> ClusterHandle:
    """Connect to a running Dask scheduler; a scheduler that does not answer is an Af2CpuError."""
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise Af2CpuError(
            f"could not reach the Dask scheduler at {address} within {timeout:g} s ({exc}). Start it "
            "(`dask scheduler`), check the address and port, or leave scheduler.address unset to run "
            "a local cluster"
        ) from None
    link = client.dashboard_link or None
    if link:
        log.info("Dask dashboard: %s", link)
    return ClusterHandle(client=client, cluster=None, plan=None, dashboard_link=link)


def start_local(plan: Plan, memory_per_worker: int, dashboard: bool = True) -> ClusterHandle:
    """Start a scheduler and one pinned worker process per allotment of `plan`, and a client."""
    scheduler = {
        "cls": Scheduler,
        "options": {"dashboard_address": ":0" if dashboard else None, "host": "127.0.0.1"},
    }
    cluster = SpecCluster(
        workers=worker_specs(plan, memory_per_worker),
        scheduler=scheduler,
        silence_logs=logging.WARNING,
        name="af2cpu",
    )
    try:
        client = Client(cluster)
        client.wait_for_workers(plan.instances)
    except BaseException:
        cluster.close()
        raise
    link = cluster.dashboard_link or None
    if link:
        log.info("Dask dashboard: %s", link)
    return ClusterHandle(client=client, cluster=cluster, plan=plan, dashboard_link=link)


def start_cluster(
    config: SchedulerConfig, memory_limit: int | None = None, plan: Plan | None = None
) -> ClusterHandle:
    """The cluster `config` asks for: attach to `config.address`, or start pinned local workers.

    Without `plan`, one is made from this process's CPU topology with `config.n_workers` instances
    and `config.threads_per_worker` threads (0 = decided by the planner). `memory_limit` (bytes; by
    default the available memory) is shared equally between the workers.
    """
    if config.address:
        return attach(config.address, config.connect_timeout)
    if ClusterKind(config.kind) != ClusterKind.local:
        raise ConfigError(
            f"scheduler={ClusterKind(config.kind).value} cannot start its own workers in this version; "
            "start a Dask scheduler on the cluster and set scheduler.address, or use scheduler=local"
        )
    if plan is None:
        plan = plan_instances(
            read_topology(),
            instances=config.n_workers or None,
            threads=config.threads_per_worker or None,
        )
    total = available_memory() if memory_limit is None else memory_limit
    return start_local(plan, total // plan.instances)
