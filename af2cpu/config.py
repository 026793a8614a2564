"""Typed configuration: dataclasses in Hydra's ConfigStore, YAML group options in `af2cpu.configs`.

Every section is a structured config, so an unknown or misspelled key is an error (naming the valid
keys), never a new setting. `compose_config(["db=full", "db.root=/data/af2"])` is how the CLI and the
Python API build a config.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from af2cpu.errors import ConfigError
from af2cpu.model.config import ModelConfig
from af2cpu.relax.config import RelaxConfig
from af2cpu.scheduler.config import SchedulerConfig


class ConfigEnum(str, Enum):
    """A choice among named values. Being a ``str`` whose ``str()`` is its value, a member compares
    equal to, prints as and serialises (JSON, cache keys) as that value, so code reading the composed
    configuration uses it as the plain string it names, with no conversion."""

    def __str__(self) -> str:
        return self.value


class DbPreset(ConfigEnum):
    full = "full"
    reduced = "reduced"
    mini = "mini"


@dataclass
class DatabaseConfig:
    """Genetic and structural databases, laid out as AlphaFold2's download scripts lay them out.

    Paths are relative to `root` unless overridden one by one. HH-suite databases (bfd, uniref30,
    pdb70) are given as the prefix of their ffindex files, as hhblits/hhsearch take them.
    """

    preset: DbPreset = DbPreset.mini
    root: str = MISSING
    uniref90: str = "${.root}/uniref90/uniref90.fasta"
    mgnify: str = "${.root}/mgnify/mgy_clusters_2022_05.fa"
    bfd: str = "${.root}/bfd/bfd_metaclust_clu_complete_id30_c90_final_seq.sorted_opt"
    uniref30: str = "${.root}/uniref30/UniRef30_2021_03"
    small_bfd: str = "${.root}/small_bfd/bfd-first_non_consensus_sequences.fasta"
    pdb70: str = "${.root}/pdb70/pdb70"
    template_mmcif_dir: str = "${.root}/pdb_mmcif/mmcif_files"
    obsolete_pdbs: str = "${.root}/pdb_mmcif/obsolete.dat"
    pdb_seqres: str = "${.root}/pdb_seqres/pdb_seqres.txt"
    uniprot: str = "${.root}/uniprot/uniprot.fasta"


class Precision(ConfigEnum):
    """Numeric precision of the network's trunk."""

    fp32 = "fp32"
    bf16 = "bf16"

    @property
    def nbytes(self) -> int:
        """Bytes per activation."""
        return 2 if self is Precision.bf16 else 4


class Backend(ConfigEnum):
    native = "native"
    ipex = "ipex"


@dataclass
class RuntimeConfig:
    """One place for runtime options: threads, precision, memory, compilation."""

    threads: int = 0  # 0 = every core in this process's affinity mask
    precision: Precision = Precision.fp32
    memory_limit: str = "auto"  # "auto" (available RAM), bytes, or e.g. "16G"
    compile: bool = False  # torch.compile of the repeated blocks (inductor), cached across runs
    compile_cache_dir: str = "${af2cpu_cache:inductor}"
    backend: Backend = Backend.native


@dataclass
class SearchConfig:
    """MSA and template search settings."""

    timeout_s: float = 3 * 3600.0  # per search; a tool running longer is killed and the target fails
    cpus: int = 0  # per search; 0 = the allotment of the worker running it


@dataclass
class OutputConfig:
    """What is written besides AlphaFold2's standard outputs."""

    save_representations: bool = False  # single, pair, MSA first row in result_<model>.npz
    save_recycles: bool = False  # per-recycle structures and pLDDT in result_<model>.npz
    features_pkl: bool = False  # also features.pkl, for tools that read AlphaFold2's pickle


@dataclass
class Config:
    """The whole af2cpu configuration."""

    db: DatabaseConfig = MISSING
    runtime: RuntimeConfig = MISSING
    model: ModelConfig = MISSING
    relax: RelaxConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    search: SearchConfig = field(default_factory=SearchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # Where official params_model_*.npz live; AF2CPU_PARAMS_DIR overrides the default cache folder.
    params_dir: str = "${oc.env:AF2CPU_PARAMS_DIR,${af2cpu_cache:params}}"
    # "official" reads params_dir; "random" makes untrained weights for smoke runs.
    params: str = "official"
    random_seed: int = 0
    max_template_date: str = "2100-01-01"


def _cache_dir(sub: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "af2cpu", sub)


def _data_dir(sub: str) -> str:
    from af2cpu.data import DATA_DIR

    return str(DATA_DIR / sub)


_REGISTERED = False


def register_configs() -> None:
    """Register the schemas and OmegaConf resolvers once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver("af2cpu_cache", _cache_dir, replace=True)
    OmegaConf.register_new_resolver("af2cpu_data", _data_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="db", name="base_db", node=DatabaseConfig)
    cs.store(group="runtime", name="base_runtime", node=RuntimeConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="relax", name="base_relax", node=RelaxConfig)
    cs.store(group="scheduler", name="base_scheduler", node=SchedulerConfig)
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
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

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
