"""The stages of one target, as functions a Dask worker runs.

Data flow (DESIGN.md): three searches in parallel (plus the template search after UniRef90) ->
raw features -> one inference per model preset -> ranking -> relaxation -> ranked structures,
plots, timings. Every stage writes its outputs atomically into ``<out>/<target id>/`` and leaves a
stage record keyed by what produced it (``af2cpu.scheduler.cache``), so a rerun skips what is
finished and a killed run resumes where it stopped. Each function returns the :class:`StageTiming`
of its stage, from which ``timings.json`` is written at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from af2cpu.errors import Af2CpuError, ConfigError, InputError
from af2cpu.preprocessing.inputs import Target

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageTiming:
    """When a stage ran (epoch seconds); `cached` when a previous run's result was reused."""

    name: str
    start: float
    end: float
    cached: bool = False
    info: dict = dataclasses.field(default_factory=dict)


def _plain(value: Any) -> Any:
    """Config values as plain JSON-able Python (enums -> their values)."""
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return getattr(value, "value", value)


def _cached_or_run(target_dir: Path, stage: str, key: str, compute, force: bool) -> StageTiming:
    from af2cpu.scheduler.cache import StageCache

    cache = StageCache(target_dir)
    if not force:
        record = cache.lookup(stage, key)
        if record is not None:
            return StageTiming(stage, record.started, record.finished, cached=True, info=record.info)
    cache.folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outputs, info = compute()
    from af2cpu.scheduler.cache import StageRecord

    record = StageRecord(stage, key, started, time.time(), list(outputs), dict(info))
    cache.record(record)
    return StageTiming(stage, record.started, record.finished, cached=False, info=record.info)


def _allotted_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Searches and features


def search_stage(
    target: Target, search_name: str, cfg: DictConfig, target_dir: str, cpus: int = 0, force: bool = False,
    precomputed_dir: str | None = None,
) -> StageTiming:
    """Run one search of `target` (jackhmmer, hhblits or hhsearch) into ``msas/``."""
    from af2cpu.preprocessing import searches, tools
    from af2cpu.scheduler.cache import file_hash

    target_dir = Path(target_dir)
    msa_dir = target_dir / "msas"
    search = {s.name: s for s in searches.plan_searches(cfg.db)}[search_name]
    stage = f"search_{search_name}"

    if not force and searches.reusable(search, target.sequence, msa_dir):
        # The result and its provenance JSON match this sequence and these databases.
        from af2cpu.scheduler.cache import StageCache

        record = StageCache(target_dir).lookup(stage, file_hash(msa_dir / (search.output + ".json")))
        if record is not None:
            return StageTiming(stage, record.started, record.finished, cached=True, info=record.info)

    def compute():
        searches.run_search(
            search, target, msa_dir, cpus or _allotted_cpus(), float(cfg.search.timeout_s),
            reuse=not force, precomputed_dir=precomputed_dir,
        )
        return [f"msas/{search.output}", f"msas/{search.output}.json"], {"cpus": cpus or _allotted_cpus()}

    del tools  # the tool wrappers are reached through `searches`
    started = time.time()
    outputs, info = compute()
    from af2cpu.scheduler.cache import StageCache, StageRecord

    key = file_hash(msa_dir / (search.output + ".json"))
    record = StageRecord(stage, key, started, time.time(), outputs, info)
    StageCache(target_dir).record(record)
    return StageTiming(stage, record.started, record.finished, info=info)


def features_stage(target: Target, cfg: DictConfig, target_dir: str, force: bool = False) -> StageTiming:
    """Raw features (``features.npz``) of `target` from its finished searches."""
    from af2cpu.outputs import atomic_write_text, save_features_npz, save_features_pkl
    from af2cpu.preprocessing import searches
    from af2cpu.scheduler.cache import file_hash, stage_key

    target_dir = Path(target_dir)
    msa_dir = target_dir / "msas"
    plan = searches.plan_searches(cfg.db)
    settings = searches.template_settings(cfg)
    inputs = {s.output: file_hash(msa_dir / s.output) for s in plan}
    key = stage_key(
        "features",
        inputs=inputs,
        config={"template": _plain(dataclasses.asdict(settings)), "sequence": target.sequence,
                "features_pkl": bool(cfg.output.features_pkl)},
        tool_versions={},
        databases={},
    )

    def compute():
        result = searches.target_raw_features(target, plan, msa_dir, settings)
        save_features_npz(target_dir / "features.npz", result.features)
        outputs = ["features.npz", "features_report.json"]
        if cfg.output.features_pkl:
            save_features_pkl(target_dir / "features.pkl", result.features)
            outputs.append("features.pkl")
        report = {
            "id": target.id,
            "description": target.description,
            "sequence": target.sequence,
            "msa_sizes": result.msa_sizes,
            "templates": [name.decode() for name in result.features["template_domain_names"]],
            "skipped_templates": [dataclasses.asdict(s) for s in result.templates.skipped],
            "template_warnings": result.templates.warnings,
        }
        atomic_write_text(target_dir / "features_report.json", json.dumps(report, indent=2) + "\n")
        return outputs, {"msa_sizes": result.msa_sizes}

    return _cached_or_run(target_dir, "features", key, compute, force)


def existing_features(target: Target, target_dir: str) -> StageTiming:
    """The features stage of a split workflow: features.npz made earlier by `af2cpu features`."""
    from af2cpu.scheduler.cache import StageCache

    target_dir = Path(target_dir)
    path = target_dir / "features.npz"
    if not path.is_file():
        raise InputError(
            f"{path} does not exist: run `af2cpu features` for {target.id} with the same --out first, "
            "or `af2cpu predict` to search and fold in one go"
        )
    info = json.loads((target_dir / "target.json").read_text()) if (target_dir / "target.json").is_file() else {}
    if info.get("sequence", target.sequence) != target.sequence:
        raise InputError(f"{path} was made for another sequence than record {target.id!r}; rerun `af2cpu features`")
    record = StageCache(target_dir).lookup("features")
    if record is not None:
        return StageTiming("features", record.started, record.finished, cached=True, info=record.info)
    stat = path.stat()
    return StageTiming("features", stat.st_mtime, stat.st_mtime, cached=True)


# ---------------------------------------------------------------------------------------------
# Inference


def model_seed(cfg: DictConfig, model_name: str) -> int:
    """AlphaFold2's per-model seed: model index + random_seed * number of models."""
    names = list(cfg.model.names)
    return names.index(model_name) + int(cfg.random_seed) * len(names)


def params_file(cfg: DictConfig, model_name: str) -> Path:
    """Where the official parameters of `model_name` are expected."""
    return Path(str(cfg.params_dir)) / f"params_{model_name}.npz"


def check_params(cfg: DictConfig) -> None:
    """Fail before any work when official params are asked for but missing."""
    if cfg.params == "random":
        return
    if cfg.params != "official":
        raise InputError(f"params={cfg.params!r}: use params=official (files in params_dir) or params=random")
    missing = [params_file(cfg, name) for name in cfg.model.names if not params_file(cfg, name).is_file()]
    if missing:
        raise InputError(
            f"model parameters not found: {', '.join(str(p) for p in missing)}. Get them with "
            f"`af2cpu params download --dest {cfg.params_dir}` (about 5 GB), point params_dir= (or "
            "AF2CPU_PARAMS_DIR) at a folder that has them, or run params=random for an untrained smoke test"
        )


def _params_identity(cfg: DictConfig, model_name: str) -> dict:
    if cfg.params == "random":
        return {"random_seed": model_seed(cfg, model_name)}
    path = params_file(cfg, model_name)
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_model(cfg: DictConfig, model_name: str, options=None):
    """The network of `model_name` with official weights, or random ones when params=random."""
    from af2cpu.model.alphafold import AlphaFold
    from af2cpu.model.params import load_params, random_params
    from af2cpu.runtime.allocator import tune_allocator

    tune_allocator()
    if cfg.params == "random":
        model = AlphaFold(model_name, options)
        load_params(model, random_params(model, seed=model_seed(cfg, model_name)), source="random parameters")
        model.set_options(model.options)
        model = model.eval()
    else:
        model = AlphaFold.from_params(params_file(cfg, model_name), model_name, options)
    if _plain(cfg.runtime.backend) == "ipex":
        model = _ipex_optimize(model, _plain(cfg.runtime.precision))
    return model


def _ipex_optimize(model, precision: str):
    """The optional Intel Extension for PyTorch back end (archived upstream; native is the default)."""
    import torch

    try:
        import intel_extension_for_pytorch as ipex
    except ImportError as exc:
        raise ConfigError(
            f"runtime.backend=ipex needs intel-extension-for-pytorch, which cannot be imported here ({exc}); "
            f"it was archived upstream and needs its matching torch (2.8; this is {torch.__version__}). "
            "Use runtime.backend=native (the default: bf16 and compile are built in natively)"
        ) from None
    return ipex.optimize(model, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)


def infer_stage(target: Target, model_name: str, cfg: DictConfig, target_dir: str, force: bool = False) -> StageTiming:
    """Run one model preset on the target's features: result npz, confidence/PAE JSON, unrelaxed PDB."""
    import torch

    from af2cpu.common import protein
    from af2cpu.model.memory import TargetShape, plan_options
    from af2cpu.model.presets import get_preset
    from af2cpu.outputs import (
        atomic_write_text,
        load_features_npz,
        protein_from_prediction,
        write_model_outputs,
    )
    from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
    from af2cpu.scheduler.cache import file_hash, stage_key

    target_dir = Path(target_dir)
    stage = f"infer_{model_name}"
    key = stage_key(
        stage,
        inputs={"features.npz": file_hash(target_dir / "features.npz")},
        config={
            "params": _params_identity(cfg, model_name),
            "num_recycle": int(cfg.model.num_recycle),
            "early_stop": float(cfg.model.recycle_early_stop_tolerance),
            "seed": model_seed(cfg, model_name),
            "precision": _plain(cfg.runtime.precision),
            "output": _plain(cfg.output),
        },
        tool_versions={"torch": torch.__version__},
        databases={},
    )

    def compute():
        raw = load_features_npz(target_dir / "features.npz")
        settings = PipelineSettings.from_preset(model_name, num_recycle=int(cfg.model.num_recycle))
        processed = process_features(raw, settings, seed=model_seed(cfg, model_name))
        templates = int(processed["template_aatype"].shape[1]) if "template_aatype" in processed else 0
        shape = TargetShape(int(processed["aatype"].shape[1]), int(processed["msa_feat"].shape[1]),
                            int(processed["extra_msa"].shape[1]), templates)
        options, _ = plan_options(cfg.runtime, get_preset(model_name), shape)
        model = load_model(cfg, model_name, options)
        out = model.predict(
            processed,
            num_recycle=int(cfg.model.num_recycle),
            early_stop_tolerance=float(cfg.model.recycle_early_stop_tolerance),
            return_recycles=bool(cfg.output.save_recycles),
        )
        if not cfg.output.save_representations:
            out.pop("representations", None)
        if cfg.output.save_recycles:
            out["recycles"] = [
                {"final_atom_positions": r["structure_module"]["final_atom_positions"], "plddt": r["plddt"]}
                for r in out["recycles"]
            ]
        write_model_outputs(target_dir, model_name, out)
        first = {name: value[0] for name, value in processed.items()}
        prot = protein_from_prediction(first, out)
        atomic_write_text(target_dir / f"unrelaxed_{model_name}.pdb", protein.to_pdb(prot))
        outputs = [f"result_{model_name}.npz", f"confidence_{model_name}.json", f"unrelaxed_{model_name}.pdb"]
        if out.get("predicted_aligned_error") is not None:
            outputs.append(f"pae_{model_name}.json")
        info = {
            "mean_plddt": float(np.mean(out["plddt"])),
            "ranking_confidence": float(out["ranking_confidence"]),
            "ptm": float(out["ptm"]) if "ptm" in out else None,
            "num_recycles": int(out["num_recycles"]),
            "chunks": dataclasses.asdict(options.chunks),
            "threads": torch.get_num_threads(),
        }
        return outputs, info

    return _cached_or_run(target_dir, stage, key, compute, force)


# ---------------------------------------------------------------------------------------------
# Ranking, relaxation, final files


def rank_stage(cfg: DictConfig, target_dir: str, infers: Sequence[StageTiming]) -> list[str]:
    """Write ``ranking_debug.json``; returns the model names, most confident first."""
    from af2cpu.outputs import atomic_write_text, rank_models, ranking_debug_json

    confidences = {t.name.removeprefix("infer_"): t.info["ranking_confidence"] for t in infers}
    ptms = {t.name.removeprefix("infer_"): t.info["ptm"] for t in infers if t.info.get("ptm") is not None}
    atomic_write_text(
        Path(target_dir) / "ranking_debug.json",
        ranking_debug_json(confidences, ptms=ptms or None, untrained_params=cfg.params == "random") + "\n",
    )
    return rank_models(confidences)


def relax_stage(model_name: str, cfg: DictConfig, target_dir: str, force: bool = False) -> StageTiming:
    """Amber-relax one model's structure; a relax failure keeps the unrelaxed one and is recorded."""
    from af2cpu.outputs import atomic_write_text
    from af2cpu.relax import relax
    from af2cpu.relax.config import RelaxConfig
    from af2cpu.scheduler.cache import file_hash, stage_key

    target_dir = Path(target_dir)
    stage = f"relax_{model_name}"
    unrelaxed = target_dir / f"unrelaxed_{model_name}.pdb"
    relax_cfg = {k: v for k, v in _plain(cfg.relax).items() if k != "mode"}
    key = stage_key(stage, {"unrelaxed": file_hash(unrelaxed)}, relax_cfg, {}, {})

    def compute():
        config = RelaxConfig(**relax_cfg)
        threads = int(cfg.relax.threads) or _allotted_cpus()
        try:
            pdb_text, report = relax(unrelaxed.read_text(), config=config, threads=threads)
            report_dict = report.to_dict()
        except InputError as exc:  # e.g. an X residue Amber cannot parametrise, as AlphaFold2 refuses too
            pdb_text, report_dict = "", {"relaxed": False, "failure": str(exc)}
        atomic_write_text(target_dir / f"relax_report_{model_name}.json", json.dumps(report_dict, indent=2) + "\n")
        outputs = [f"relax_report_{model_name}.json"]
        if report_dict.get("relaxed"):
            atomic_write_text(target_dir / f"relaxed_{model_name}.pdb", pdb_text)
            outputs.append(f"relaxed_{model_name}.pdb")
        else:
            log.warning("%s: relaxation of %s failed (%s); keeping the unrelaxed structure",
                        target_dir.name, model_name, report_dict.get("failure"))
        return outputs, {"relaxed": bool(report_dict.get("relaxed")), "failure": report_dict.get("failure")}

    return _cached_or_run(target_dir, stage, key, compute, force)


def relax_models(order: Sequence[str], mode: str) -> list[str]:
    """Which models to relax for relax=best|all|none."""
    return {"best": list(order[:1]), "all": list(order), "none": []}[mode]


def finalize_stage(
    target: Target, cfg: DictConfig, target_dir: str, order: Sequence[str], timings: Sequence[StageTiming],
) -> dict:
    """Ranked PDB/mmCIF (relaxed where available), plots, ``timings.json``; returns a summary."""
    from af2cpu import plots
    from af2cpu.common import protein
    from af2cpu.outputs import (
        atomic_write_text,
        load_features_npz,
        load_result_npz,
        timings_json,
        write_ranked_structures,
    )

    target_dir = Path(target_dir)
    pdbs, cifs = {}, {}
    for name in order:
        relaxed = target_dir / f"relaxed_{name}.pdb"
        source = relaxed if relaxed.is_file() else target_dir / f"unrelaxed_{name}.pdb"
        pdbs[name] = source.read_text()
        cifs[name] = protein.to_mmcif(protein.from_pdb_string(pdbs[name]), file_id=f"{target.id}_{name}")
    write_ranked_structures(target_dir, order, pdbs, cifs)

    results = {name: load_result_npz(target_dir / f"result_{name}.npz", prefixes=[
        "plddt", "predicted_aligned_error", "max_predicted_aligned_error", "ptm"]) for name in order}
    plot_dir = target_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    title = target.id + (" (UNTRAINED random params)" if cfg.params == "random" else "")
    plots.plot_plddt({n: r["plddt"] for n, r in results.items()}, title=title, path=plot_dir / "plddt.png")
    paes = {n: r["predicted_aligned_error"] for n, r in results.items() if "predicted_aligned_error" in r}
    if paes:
        max_pae = float(next(iter(results.values())).get("max_predicted_aligned_error", 31.75))
        plots.plot_pae(paes, max_pae=max_pae, title=title, path=plot_dir / "pae.png")
    features = load_features_npz(target_dir / "features.npz")
    plots.plot_msa_coverage(np.asarray(features["msa"]), title=target.id, path=plot_dir / "msa_coverage.png")

    stages = {t.name: (t.start, t.end) for t in timings}
    atomic_write_text(target_dir / "timings.json", timings_json(stages) + "\n")
    best = order[0]
    return {
        "best_model": best,
        "mean_plddt": float(np.mean(results[best]["plddt"])),
        "ptm": float(results[best]["ptm"]) if "ptm" in results[best] else None,
        "length": len(target.sequence),
    }


def write_target_info(target: Target, target_dir: str) -> None:
    """``target.json``: the id, the original FASTA header and the sequence (ids are sanitised)."""
    from af2cpu.outputs import atomic_write_text

    Path(target_dir).mkdir(parents=True, exist_ok=True)
    payload = {"id": target.id, "description": target.description, "sequence": target.sequence}
    path = Path(target_dir) / "target.json"
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing is not None and existing.get("sequence") != target.sequence:
            raise Af2CpuError(
                f"{target_dir} holds results of another sequence for id {target.id!r} (from "
                f"{existing.get('description')!r}); use another --out folder or rename the record"
            )
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
