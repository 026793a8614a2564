"""Dask clusters whose workers are pinned to the cores the placement plan gives them.

`start_cluster` attaches to a running scheduler (`scheduler.address`), starts a dask-jobqueue
cluster whose workers are SLURM or PBS jobs (`scheduler=slurm|pbs`, adaptive between
`adapt_minimum` and `adapt_maximum` jobs; each job's memory the batch's largest stage estimate unless
`scheduler.memory` sets it), or starts a local scheduler and one `distributed.Nanny` worker process per
planned instance. Each local worker:

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
import math
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from dask.utils import parse_bytes
from distributed import Client, Nanny, Scheduler, SpecCluster
from distributed.diagnostics.plugin import WorkerPlugin
from typing_extensions import Self

from af2cpu.config import ClusterKind, SchedulerConfig
from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.runtime.memory import GIB, is_auto
from af2cpu.runtime.placement import Allotment, Plan, plan_instances
from af2cpu.runtime.threads import apply_allotment, openmp_environment, thread_environment
from af2cpu.runtime.topology import available_memory, cgroup_cpu_limit, read_topology

log = logging.getLogger(__name__)


class PinToAllotment(WorkerPlugin):
    """Applies one allotment to the worker process it is installed in."""

    name = "af2cpu-pin"

    def __init__(self, allotment: Allotment):
        self.allotment = allotment

    def setup(self, worker) -> None:
        apply_allotment(self.allotment)


class PinnedNanny(Nanny):
    """A Nanny whose worker process starts with its allotment's thread variables (``env``) already set.

    Nanny applies ``env`` inside the new process, after it started, which is too late for the OpenMP
    runtime if anything imported torch first; variables in ``pre_spawn_env`` are in the environment the
    process starts with, so OpenMP reads them whatever the import order."""

    def __init__(self, *args, env: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, env=env, **kwargs)
        self.pre_spawn_env.update(env or {})


def worker_specs(plan: Plan, memory_per_worker: int) -> dict[str, dict]:
    """SpecCluster worker specifications, one pinned Nanny per allotment of `plan`."""
    specs = {}
    for i, allotment in enumerate(plan.allotments):
        log.info("worker af2cpu-%d: %s", i, allotment.describe())
        specs[f"af2cpu-{i}"] = {
            "cls": PinnedNanny,
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _started(client: Client, cluster, plan: Plan | None) -> ClusterHandle:
    """The handle of a cluster af2cpu started, its dashboard link logged."""
    link = cluster.dashboard_link or None
    if link:
        log.info("Dask dashboard: %s", link)
    return ClusterHandle(client=client, cluster=cluster, plan=plan, dashboard_link=link)


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
    return _started(client, cluster, plan)


def job_script_value(what: str, value: object) -> str:
    """``value`` as text for a generated job script (sbatch, PBS), or a ConfigError naming ``what`` when it
    holds a newline or another control character, which would end a ``#SBATCH``/``#PBS`` line or a
    command and start a line of its own."""
    text = str(value)
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{what} {text!r} contains the control character {bad!r} (a newline?); a job script "
                          "cannot carry it safely: remove it")
    return text


@dataclass(frozen=True)
class MemoryNeed:
    """What one worker process (a SLURM array task, a dask-jobqueue worker) needs to run any stage of a
    batch: the largest stage estimate plus headroom (af2cpu.scheduler.slurm.estimated_memory), and the
    target that needs it."""

    nbytes: int
    target: str
    residues: int


def warn_if_short(request: str, per_worker: int, need: MemoryNeed) -> None:
    """A warning when a memory ``request`` the user set gives each worker process less than ``need``.

    A warning, not an error: the estimate is the unchunked pass at its preset's largest inputs plus
    headroom, and the planner on the worker chunks the network within what the job has (slower), so a
    smaller request (a partition's cap, a user who knows the MSAs are shallow) can run; a target that does
    not fit even in the smallest chunks fails there with the planner's error, naming it."""
    if per_worker < need.nbytes:
        log.warning("%s gives each worker process %.1f GiB, less than the %.1f GiB planned for %s (%d residues: "
                    "its largest stage estimate plus headroom); its inferences will run in smaller chunks, or fail "
                    "if even the smallest do not fit. Leave the memory to the planner to request the estimate",
                    request, per_worker / GIB, need.nbytes / GIB, need.target, need.residues)


def job_memory(config: SchedulerConfig, need: MemoryNeed | None) -> str:
    """The memory each worker job asks for: ``scheduler.memory``, or with ``auto`` the batch's ``need``
    for each of the job's ``scheduler.processes`` workers (whole GiB). A set value below that need is
    warned about (warn_if_short), never raised: it wins."""
    processes = max(1, int(config.processes))
    text = job_script_value("scheduler.memory", config.memory)
    if is_auto(text):
        if need is None:
            raise ConfigError("scheduler.memory=auto sizes the worker jobs from a batch's stage estimates, and "
                              "there is no batch here: set scheduler.memory (e.g. 16GiB)")
        return f"{math.ceil(need.nbytes * processes / GIB)}GiB"
    try:
        requested = parse_bytes(text)
    except ValueError:
        raise ConfigError(f"scheduler.memory={text!r} is not a size: write auto, or e.g. 16GiB") from None
    if need is not None:
        warn_if_short(f"scheduler.memory={text} ({processes} worker process(es) a job)", requested // processes, need)
    return text


def starts_worker_jobs(config: SchedulerConfig) -> bool:
    """Whether ``config`` starts dask-jobqueue worker jobs (SLURM or PBS), rather than attaching or local."""
    return not config.address and ClusterKind(config.kind) != ClusterKind.local


def jobqueue_options(config: SchedulerConfig, need: MemoryNeed | None = None) -> dict:
    """dask-jobqueue keyword arguments for `config`: job size (its memory: job_memory, from the batch's
    ``need``), and worker resources and threads that match the job's share of cores so the graph's `cpus`
    requests hold on batch nodes too."""
    processes = max(1, int(config.processes))
    if int(config.cores) < processes:
        raise ConfigError(f"scheduler.cores ({config.cores}) must be at least scheduler.processes ({processes})")
    threads = int(config.cores) // processes
    options = {
        "cores": int(config.cores),
        "processes": processes,
        "walltime": job_script_value("scheduler.walltime", config.walltime),
        "job_name": "af2cpu-worker",
        "worker_extra_args": ["--resources", f"cpus={threads}"],
        # Thread counts and OpenMP's wait policy, exported before `dask worker` starts (and loads torch).
        "job_script_prologue": [f"export {name}={shlex.quote(value)}"
                                for name, value in openmp_environment(threads).items()],
        "job_extra_directives": [job_script_value("scheduler.job_directives", d) for d in config.job_directives or []],
    }
    if config.queue:
        options["queue"] = job_script_value("scheduler.queue", config.queue)
    if config.account:
        options["account"] = job_script_value("scheduler.account", config.account)
    if config.log_directory:
        options["log_directory"] = job_script_value("scheduler.log_directory", config.log_directory)
    if config.host:
        options["scheduler_options"] = {"host": job_script_value("scheduler.host", config.host)}
    options["memory"] = job_memory(config, need)  # last: the values above are checked whatever it raises
    return options


def check_job_script(script: str) -> None:
    """`sbatch --test-only` of a worker job script: a partition, account or limit the cluster refuses
    is an error now, not a job that never starts while af2cpu waits for it."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60,
                              check=False)
    if proc.returncode != 0:
        raise Af2CpuError(
            f"SLURM refuses the Dask worker job ({proc.stderr.strip()}); check scheduler.queue, "
            f"scheduler.account, scheduler.cores, scheduler.memory and scheduler.walltime. The job script:\n{script}"
        )


def start_jobqueue(config: SchedulerConfig, need: MemoryNeed | None = None) -> ClusterHandle:
    """A dask-jobqueue SLURMCluster or PBSCluster scaled adaptively, and a client with a first worker;
    ``need``: what a worker needs for the batch (job_memory)."""
    kind = ClusterKind(config.kind)
    try:
        import dask_jobqueue  # deferred: an optional dependency (the hpc extra)
    except ImportError:
        raise ConfigError(f"scheduler={kind.value} needs dask-jobqueue: pip install 'af2cpu[hpc]'") from None
    if not 1 <= int(config.adapt_minimum) <= int(config.adapt_maximum):
        raise ConfigError(f"need 1 <= scheduler.adapt_minimum ({config.adapt_minimum}) <= "
                          f"scheduler.adapt_maximum ({config.adapt_maximum})")
    cls = {ClusterKind.slurm: dask_jobqueue.SLURMCluster, ClusterKind.pbs: dask_jobqueue.PBSCluster}[kind]
    submit = {ClusterKind.slurm: "sbatch", ClusterKind.pbs: "qsub"}[kind]
    if shutil.which(submit) is None:
        raise ConfigError(f"scheduler={kind.value} submits worker jobs with {submit}, which is not on PATH; "
                          "run on a login node of the cluster, or use scheduler=local")
    options = jobqueue_options(config, need)
    log.info("each %s worker job asks for %d core(s) and %s of memory (scheduler.memory=%s)", kind.value,
             options["cores"], options["memory"], config.memory)
    cluster = cls(**options)
    try:
        if kind == ClusterKind.slurm:
            check_job_script(cluster.job_script())
        cluster.adapt(minimum_jobs=int(config.adapt_minimum), maximum_jobs=int(config.adapt_maximum))
        client = Client(cluster)
        log.info("waiting for the first %s worker job to start (up to %g s)", kind.value, config.worker_wait)
        try:
            client.wait_for_workers(1, timeout=float(config.worker_wait))
        except TimeoutError:
            raise Af2CpuError(
                f"no {kind.value} worker job started within {config.worker_wait:g} s (job script:\n"
                f"{cluster.job_script()}); check the queue, or raise scheduler.worker_wait"
            ) from None
    except BaseException:
        cluster.close()
        raise
    return _started(client, cluster, None)


def start_cluster(
    config: SchedulerConfig, memory_limit: int | None = None, plan: Plan | None = None, model_threads: int = 0,
    need: MemoryNeed | None = None,
) -> ClusterHandle:
    """The cluster `config` asks for: attach to `config.address`, or start pinned local workers.

    Without `plan`, one is made from this process's CPU topology with `config.n_workers` instances of
    `config.threads_per_worker` threads, or else of `model_threads` (``runtime.threads``: one model
    instance per worker); 0 leaves it to the planner. `memory_limit` (bytes; by default the available
    memory) is shared equally between the workers. `need` sizes dask-jobqueue worker jobs (job_memory).
    """
    if config.address:
        return attach(config.address, config.connect_timeout)
    if starts_worker_jobs(config):
        return start_jobqueue(config, need)
    if plan is None:
        plan = plan_instances(
            read_topology(),
            instances=config.n_workers or None,
            threads=config.threads_per_worker or model_threads or None,
            cpu_quota=cgroup_cpu_limit(),
        )
    total = available_memory() if memory_limit is None else memory_limit
    return start_local(plan, total // plan.instances)
