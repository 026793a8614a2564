"""Configuration of the Dask scheduler (the `scheduler` Hydra group: local | slurm | pbs)."""

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class ClusterKind(str, Enum):
    local = "local"
    slurm = "slurm"
    pbs = "pbs"


@dataclass
class SchedulerConfig:
    """Where tasks run. `address` attaches to a running Dask scheduler instead of starting one."""

    kind: ClusterKind = ClusterKind.local
    address: Optional[str] = None
    n_workers: int = 0  # 0 = planned from the CPU topology
    retries: int = 1
    threads_per_worker: int = 0  # 0 = planned from the CPU topology
    connect_timeout: float = 10.0  # seconds to reach `address` before giving up
