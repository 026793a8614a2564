"""Configuration of the Dask scheduler (the `scheduler` Hydra group: local | slurm | pbs)."""

from dataclasses import dataclass, field
from enum import Enum


class ClusterKind(str, Enum):
    local = "local"
    slurm = "slurm"
    pbs = "pbs"


@dataclass
class SchedulerConfig:
    """Where tasks run. `address` attaches to a running Dask scheduler instead of starting one."""

    kind: ClusterKind = ClusterKind.local
    address: str | None = None
    n_workers: int = 0  # 0 = planned from the CPU topology
    retries: int = 1
    threads_per_worker: int = 0  # 0 = planned from the CPU topology
    connect_timeout: float = 10.0  # seconds to reach `address` before giving up
    # scheduler=slurm | pbs (dask-jobqueue): what each batch job asks for; every job runs `processes`
    # Dask workers sharing its `cores` and `memory`.
    queue: str | None = None  # SLURM partition / PBS queue; None = the batch system's default
    account: str | None = None
    walltime: str = "04:00:00"
    cores: int = 4
    memory: str = "16GiB"
    processes: int = 1
    job_directives: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS lines, e.g. "--qos=long"
    log_directory: str | None = None  # the jobs' stdout/stderr; None = the submission folder
    adapt_minimum: int = 1  # jobs kept while the batch runs (at least one, to learn the workers' size)
    adapt_maximum: int = 4  # jobs the batch may grow to while tasks wait
    # Address the jobqueue scheduler listens on; None = the host's first network interface, which
    # worker jobs on other nodes can reach. 127.0.0.1 keeps a one-node set-up on loopback.
    host: str | None = None
    worker_wait: float = 3600.0  # seconds to wait for the first worker job to start (queueing included)
