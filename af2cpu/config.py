"""Typed configuration: dataclasses in Hydra's ConfigStore, YAML group options in `af2cpu.configs`.

Every section is a structured config, so an unknown or misspelled key is an error (naming the valid
keys), never a new setting. `compose_config(["db=full", "db.root=/data/af2"])` is how the CLI and the
Python API build a config. Choices are :class:`ConfigEnum` members, which read as the plain strings
they name. The ``db`` section is derived from the database catalogue (``af2cpu.databases``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from af2cpu.data import DATA_DIR
from af2cpu.databases import DATABASES
from af2cpu.errors import ConfigError


class ConfigEnum(str, Enum):
    """A choice among named values. Being a ``str`` whose ``str()`` is its value, a member compares
    equal to, prints as and serialises (JSON, cache keys) as that value, so code reading the composed
    configuration uses it as the plain string it names, with no conversion."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, what: str):
        """The member ``value`` (a member or its name) names; ConfigError otherwise, beginning with ``what``
        (e.g. "precision 'fp16'") and listing the choices."""
        try:
            return cls(str(value))
        except ValueError:
            raise ConfigError(f"{what} is not available; choose one of {', '.join(m.value for m in cls)}") from None


class DbPreset(ConfigEnum):
    full = "full"
    reduced = "reduced"
    mini = "mini"
    colabfold = "colabfold"  # ColabFold's MMseqs2 databases (search=mmseqs2)


DatabaseConfig = make_dataclass(
    "DatabaseConfig",
    [("preset", DbPreset, field(default=DbPreset.mini)), ("root", str, field(default=MISSING))]
    + [(db.name, str, field(default=f"${{.root}}/{db.path}")) for db in DATABASES],
)
DatabaseConfig.__doc__ = """Genetic and structural databases, laid out as AlphaFold2's download scripts lay them out.

One path per entry of the database catalogue (af2cpu.databases), relative to `root` unless overridden one
by one. HH-suite databases (bfd, uniref30, pdb70) are given as the prefix of their ffindex files, as
hhblits/hhsearch take them.
"""


class Precision(ConfigEnum):
    """Numeric precision of the network's trunk. ``auto`` is bf16 where the CPU has native bf16
    matrix instructions that are clearly faster than fp32's (measured), fp32 elsewhere:
    ``af2cpu.runtime.precision.resolve_precision`` decides."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"

    @property
    def nbytes(self) -> int:
        """Bytes per activation (of a resolved precision: fp32 or bf16)."""
        if self is Precision.auto:
            raise ValueError("resolve runtime.precision=auto first (af2cpu.runtime.precision.resolve_precision)")
        return 2 if self is Precision.bf16 else 4


class Fp32Products(ConfigEnum):
    """The library of the network's fp32 matrix products. ``auto`` is oneDNN where it multiplies clearly
    faster than MKL (PyTorch's own choice) on this CPU, measured: MKL takes slower paths on AMD CPUs;
    ``af2cpu.runtime.products.resolve_products`` decides."""

    auto = "auto"
    mkl = "mkl"
    onednn = "onednn"


class AttentionKernel(ConfigEnum):
    """The kernel of the network's attention (softmax(q·kᵀ + bias)·v), and of its element-wise work (layer
    norms, gates). ``auto`` is
    af2cpu's own (model/csrc/attention.cpp, compiled on first use) where it was measured clearly faster than
    PyTorch's on this CPU, per precision (and head size), PyTorch's elsewhere; ``af2cpu.model.kernels``
    decides."""

    auto = "auto"
    pytorch = "pytorch"
    af2cpu = "af2cpu"


class Backend(ConfigEnum):
    native = "native"
    ipex = "ipex"


@dataclass
class RuntimeConfig:
    """One place for runtime options: threads, precision, memory, compilation."""

    threads: int = 0  # threads of one model instance; 0 = every CPU of the worker (or process) running it
    precision: Precision = Precision.auto  # bf16 where the CPU's native bf16 is clearly faster, else fp32
    memory_limit: str = "auto"  # "auto" (available RAM), bytes, or e.g. "16G"
    compile: bool = False  # torch.compile of the repeated blocks (inductor), cached across runs
    compile_cache_dir: str = "${af2cpu_cache:inductor}"
    backend: Backend = Backend.native
    fp32_products: Fp32Products = Fp32Products.auto  # oneDNN where it beats MKL here (AMD CPUs), else MKL
    attention: AttentionKernel = AttentionKernel.auto  # af2cpu's kernels where measured faster here, else PyTorch's
    elementwise: AttentionKernel = AttentionKernel.auto  # the same for the layer norms, gates and bf16 sums


class SearchProtocol(ConfigEnum):
    """How MSAs are made: AlphaFold2's own searches, or ColabFold's MMseqs2 search."""

    alphafold2 = "alphafold2"  # jackhmmer UniRef90 + MGnify, hhblits BFD + UniRef30, hhsearch PDB70
    mmseqs2 = "mmseqs2"  # MMseqs2 UniRef30 + ColabFold environmental database, hhsearch PDB70 with its MSA


@dataclass
class SearchConfig:
    """MSA and template search settings."""

    protocol: SearchProtocol = SearchProtocol.alphafold2
    timeout_s: float = 3 * 3600.0  # per search; a tool running longer is killed and the target fails
    cpus: int = 0  # per search; 0 = the allotment of the worker running it
    # search=mmseqs2: all targets of a batch whose MSA is not cached in one MMseqs2 run (split per target)
    batch: bool = True


@dataclass
class OutputConfig:
    """What is written besides AlphaFold2's standard outputs."""

    save_representations: bool = False  # single, pair, MSA first row in result_<model>.npz
    save_recycles: bool = False  # per-recycle structures and pLDDT in result_<model>.npz
    features_pkl: bool = False  # also features.pkl, for tools that read AlphaFold2's pickle


MONOMER_PTM_PRESETS = ["model_1_ptm", "model_2_ptm", "model_3_ptm", "model_4_ptm", "model_5_ptm"]
MULTIMER_PRESETS = [f"model_{i}_multimer_v3" for i in range(1, 6)]


class ModelKind(ConfigEnum):
    """Which network folds a target: by its chains (``auto``), the monomer's for every target (a
    complex is then refused), or AlphaFold-Multimer's for every target (a single chain too, as
    AlphaFold2's ``multimer`` preset folds one)."""

    auto = "auto"  # monomer presets (`names`) for one chain, multimer presets (`multimer_names`) for several
    monomer = "monomer"
    multimer = "multimer"


@dataclass
class ModelConfig:
    """Which model presets run (``af2cpu.model.presets``) and the recycling schedule."""

    kind: ModelKind = ModelKind.auto
    names: list[str] = field(default_factory=lambda: list(MONOMER_PTM_PRESETS))  # monomer presets
    # Multimer presets: v3 by default; model_1_multimer_v2 ... (v2) or model_1_multimer ... (v1) re-run
    # complexes with AlphaFold 2.2's or 2.1's weights.
    multimer_names: list[str] = field(default_factory=lambda: list(MULTIMER_PRESETS))
    # Predictions of each multimer preset, each with its own seed (AlphaFold2's
    # num_multimer_predictions_per_model); a monomer preset runs once, as in AlphaFold2.
    num_predictions_per_model: int = 5
    # Recycling passes after the first; unset: each preset's own, as AlphaFold2 (3 for the monomer
    # presets and AlphaFold-Multimer v1/v2, up to 20 for v3).
    num_recycle: int | None = None
    # Stop recycling early when the mean change of Cα distances (Å) falls below this; 0 disables.
    # Unset: each preset's own (0 for the monomer presets and AlphaFold-Multimer v1/v2, 0.5 Å for v3).
    recycle_early_stop_tolerance: float | None = None


class RelaxMode(ConfigEnum):
    """Which models are relaxed: the best ranked one, all of them, or none."""

    best = "best"
    all = "all"
    none = "none"

    def count(self, num_models: int) -> int:
        """How many of ``num_models`` ranked models are relaxed (the best ``count`` of them)."""
        return {RelaxMode.best: min(1, num_models), RelaxMode.all: num_models, RelaxMode.none: 0}[self]


@dataclass
class RelaxConfig:
    """AlphaFold2's relaxation protocol settings (defaults are AlphaFold2's)."""

    mode: RelaxMode = RelaxMode.best
    stiffness: float = 10.0  # kcal/mol/Å², harmonic restraints on heavy atoms
    # AlphaFold2's "energy tolerance 2.39 kcal/mol", which OpenMM reads as an RMS force of
    # 2.39 kcal/mol/Å (= 100 kJ/mol/nm); see af2cpu.relax.amber.
    tolerance: float = 2.39
    max_iterations: int = 0  # L-BFGS steps per minimisation; 0 = until converged
    max_outer_iterations: int = 3  # minimisation rounds while violations remain
    max_attempts: int = 100  # minimisation attempts per round before the relaxation fails
    timeout_s: float = 600.0  # wall-clock limit of one relaxation; then the unrelaxed structure is kept
    threads: int = 0  # OpenMM CPU threads; 0 = the allotment of the worker running it


class ClusterKind(ConfigEnum):
    local = "local"
    slurm = "slurm"
    pbs = "pbs"


@dataclass
class SchedulerConfig:
    """Where tasks run. `address` attaches to a running Dask scheduler instead of starting one."""

    kind: ClusterKind = ClusterKind.local
    address: str | None = None
    n_workers: int = 0  # 0 = planned from the CPU topology (and runtime.threads)
    retries: int = 1
    threads_per_worker: int = 0  # 0 = runtime.threads if set, else planned from the CPU topology
    connect_timeout: float = 10.0  # seconds to reach `address` before giving up
    # scheduler=slurm | pbs (dask-jobqueue): what each batch job asks for; every job runs `processes`
    # Dask workers sharing its `cores` and `memory`.
    queue: str | None = None  # SLURM partition / PBS queue; None = the batch system's default
    account: str | None = None
    walltime: str = "04:00:00"
    cores: int = 4
    # "auto": the batch's largest stage estimate plus headroom for each of the job's `processes` workers
    # (as `af2cpu slurm script` sizes array tasks); a size (e.g. "16GiB") wins, with a warning if smaller.
    memory: str = "auto"
    processes: int = 1
    job_directives: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS lines, e.g. "--qos=long"
    log_directory: str | None = None  # the jobs' stdout/stderr; None = the submission folder
    adapt_minimum: int = 1  # jobs kept while the batch runs (at least one, to learn the workers' size)
    adapt_maximum: int = 4  # jobs the batch may grow to while tasks wait
    # Address the jobqueue scheduler listens on; None = the host's first network interface, which
    # worker jobs on other nodes can reach. 127.0.0.1 keeps a one-node set-up on loopback.
    host: str | None = None
    worker_wait: float = 3600.0  # seconds to wait for the first worker job to start (queueing included)


class Params(ConfigEnum):
    """Where the model weights come from."""

    official = "official"  # DeepMind's params_model_*.npz in params_dir
    random = "random"  # untrained random weights in the official format, for smoke runs


@dataclass
class Config:
    """The whole af2cpu configuration."""

    db: DatabaseConfig = MISSING
    runtime: RuntimeConfig = MISSING
    model: ModelConfig = MISSING
    relax: RelaxConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    search: SearchConfig = MISSING
    output: OutputConfig = field(default_factory=OutputConfig)
    # Where official params_model_*.npz live; AF2CPU_PARAMS_DIR overrides the default cache folder.
    params_dir: str = "${oc.env:AF2CPU_PARAMS_DIR,${af2cpu_cache:params}}"
    params: Params = Params.official
    random_seed: int = 0
    max_template_date: str = "2100-01-01"


def cache_dir(sub: str) -> str:
    """af2cpu's folder ``sub`` in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "af2cpu", sub)


def _data_dir(sub: str) -> str:
    return str(DATA_DIR / sub)


_REGISTERED = False


def register_configs() -> None:
    """Register the schemas and OmegaConf resolvers once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    OmegaConf.register_new_resolver("af2cpu_cache", cache_dir, replace=True)
    OmegaConf.register_new_resolver("af2cpu_data", _data_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="db", name="base_db", node=DatabaseConfig)
    cs.store(group="runtime", name="base_runtime", node=RuntimeConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="relax", name="base_relax", node=RelaxConfig)
    cs.store(group="scheduler", name="base_scheduler", node=SchedulerConfig)
    cs.store(group="search", name="base_search", node=SearchConfig)
    _REGISTERED = True


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        value = node._get_node(key)
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            keys.extend(_valid_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _explain(exc: Exception, overrides: list[str]) -> str:
    text = str(exc)
    cause = str(exc.__cause__) if exc.__cause__ is not None else ""
    match = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if match:
        group, option = match.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.MULTILINE)
        options = [o for o in options if not o.startswith("base_")]
        return f"unknown option '{option}' for {group}=. Available: {', '.join(options)}"
    bad_key = None
    match = re.search(r"Key '([^']+)' (?:is )?not in", cause + text) or re.search(
        r"Could not override '([^']+)'", text
    )
    if match:
        bad_key = match.group(1)
        full = re.search(r"full_key: (\S+)", cause)
        if full:
            bad_key = full.group(1)
    if bad_key is None:
        detail = cause.splitlines()[0] if cause else text.strip().splitlines()[0]
        full = re.search(r"full_key: (\S+)", cause)
        where = f" for {full.group(1)}" if full else ""
        return f"invalid configuration{where}: {detail}"
    base = compose_config([])
    parent = bad_key.rsplit(".", 1)[0] if "." in bad_key else ""
    node = OmegaConf.select(base, parent) if parent else base
    if parent and isinstance(node, DictConfig):
        valid = ", ".join(_valid_keys(node, parent + "."))
    else:
        valid = ", ".join(str(k) for k in base) + " (and their sub-keys)"
    return f"unknown config key '{bad_key}'. Valid keys here: {valid}"


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose the configuration with Hydra `key=value` overrides; raise ConfigError if invalid."""
    overrides = list(overrides or [])
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="af2cpu.configs", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, True)
    return cfg
