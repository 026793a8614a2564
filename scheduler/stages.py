"""The stages of one target, declared once.

:func:`target_stages` lists a target's stages: one search per entry of the search plan
(``af2cpu.preprocessing.searches``), the raw features, one inference per model preset, the ranking,
the relaxation of the best ranked models, and the final files. Each :class:`Stage` says what it does
(``run``), which stages' results it reads (``needs``), what it asks of a worker (``cpus``, and a
memory estimate), and the cache key of its result (``key``). Everything that handles stages reads this
list: the Dask graph (``af2cpu.scheduler.graph``), the in-process run of `af2cpu features`
(:func:`run_stages`), the stage cache (:func:`run_stage`), `af2cpu report` and the progress display
(:data:`KINDS`, :func:`stage_sort_key`) and the SLURM planner (the memory estimates).

Data flow: the searches run in parallel (the template search after UniRef90) -> raw features -> one
inference per model -> ranking -> relaxation -> ranked structures, plots, timings. Every stage writes
its outputs atomically into ``<out>/<target id>/`` and leaves a record keyed by what produced it
(``af2cpu.scheduler.cache``), so a rerun skips what is finished and a killed run resumes where it
stopped. Each stage returns a :class:`StageTiming`, from which ``timings.json`` is written at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from af2cpu import formats, plots
from af2cpu.common import protein
from af2cpu.config import ClusterKind, Params
from af2cpu.errors import Af2CpuError, InputError
from af2cpu.io import (
    atomic_write_text,
    file_hash,
    load_features_npz,
    load_result_npz,
    npz_shapes,
    save_features_npz,
    save_features_pkl,
)
from af2cpu.layout import TargetDir
from af2cpu.model import weights
from af2cpu.model.memory import MemoryPlanError, TargetShape, estimate_peak_memory, plan_options
from af2cpu.model.options import Options, as_precision
from af2cpu.model.presets import Preset, get_preset
from af2cpu.preprocessing import features as raw_features
from af2cpu.preprocessing import multimer, searches
from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
from af2cpu.preprocessing.inputs import Target
from af2cpu.relax import relax
from af2cpu.runtime.memory import GIB, is_auto, parse_memory_limit
from af2cpu.runtime.precision import planning_precisions
from af2cpu.runtime.threads import threads_for
from af2cpu.scheduler.cache import StageCache, StageRecord, stage_key

log = logging.getLogger(__name__)

# The kinds of stages in the order a target passes through them (stage names are ``<kind>`` or
# ``<kind>_<what>``: search_uniref90, features, infer_model_1_ptm, rank, relax_model_1_ptm, finalize).
KINDS = ("search", "features", "infer", "rank", "relax", "finalize")


def stage_kind(name: str) -> str:
    """The kind of the stage called ``name`` (its name up to the first underscore)."""
    return name.split("_", 1)[0]


def stage_sort_key(name: str) -> tuple[int, str]:
    """Orders stage names as a target passes through them; unknown names last."""
    kind = stage_kind(name)
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), name)


@dataclasses.dataclass(frozen=True)
class StageTiming:
    """When a stage ran (epoch seconds); `cached` when a previous run's result was reused."""

    name: str
    start: float
    end: float
    cached: bool = False
    info: dict = dataclasses.field(default_factory=dict)
    recorded: bool = True  # False for the stages without a record (ranking): not in timings.json


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage of one target gets: the target, the configuration, its folder."""

    target: Target
    cfg: DictConfig
    folder: TargetDir
    force: bool = False  # redo stages even when their results are cached
    precomputed: Path | None = None  # search results of an earlier run for this target
    # The msas folders of the batch's targets and chains, by sequence: a search result valid for the same
    # sequence in another's folder is copied, not searched again (`af2cpu features`; a chain once per batch).
    batch_msas: Mapping[str, Sequence[Path]] = dataclasses.field(default_factory=dict)


Inputs = Mapping[str, StageTiming]  # the results of the stages a stage needs, by stage name


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a target."""

    name: str
    # Does the work: writes its outputs (atomically) into the target folder, returns their paths and
    # the information its record keeps (read by later stages and reports).
    run: Callable[[StageContext, Inputs], tuple[list[Path], dict]]
    # The cache key of its result; None for stages that are cheap and always run (ranking, final files).
    key: Callable[[StageContext, Inputs], str] | None = None
    needs: tuple[str, ...] = ()
    cpus: int | None = 1  # CPUs it takes from a worker; None: the whole worker
    memory: Callable[[int], int] | None = None  # estimated peak bytes for a target of L residues
    # The name of its record when it is not the stage's own (relax_0 records as relax_<model>).
    record: Callable[[StageContext, Inputs], str] | None = None
    redo_on_force: bool = True  # False: results made elsewhere (features of a split workflow)
    # Work that other targets of a batch may have too (a search of the same sequence): the graph runs it
    # once, and the others' stages wait for it and reuse its result (StageContext.batch_msas).
    shares: str | None = None


def run_stage(stage: Stage, ctx: StageContext, inputs: Inputs) -> StageTiming:
    """Run ``stage`` unless its record holds the same key (then its earlier result is reused)."""
    name = stage.record(ctx, inputs) if stage.record else stage.name
    cache = StageCache(ctx.folder)
    key = stage.key(ctx, inputs) if stage.key else None
    if key is not None and (not ctx.force or not stage.redo_on_force):
        record = cache.lookup(name, key)
        if record is not None:
            return StageTiming(name, record.started, record.finished, cached=True, info=record.info)
    ctx.folder.path.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outputs, info = stage.run(ctx, inputs)
    finished = time.time()
    if key is not None:
        cache.record(StageRecord(name, key, started, finished, [ctx.folder.relative(p) for p in outputs], info))
    return StageTiming(name, started, finished, info=info, recorded=key is not None)


def run_stages(stages: Sequence[Stage], ctx: StageContext) -> dict[str, StageTiming]:
    """Run ``stages`` one after another in this process (they are declared in dependency order)."""
    done: dict[str, StageTiming] = {}
    for stage in stages:
        done[stage.name] = run_stage(stage, ctx, {name: done[name] for name in stage.needs})
    return done


def _plain(node: Any) -> Any:
    """A config section as plain JSON-able Python, for cache keys."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# ---------------------------------------------------------------------------------------------
# Searches and features


def _search_query(ctx: StageContext, chain_id: str | None) -> tuple[Target, Path, Path | None]:
    """What a search stage searches: the target itself, or (for a complex) one of its distinct chains,
    with its results in ``msas/<chain id>/``; and where precomputed results of it would be."""
    if chain_id is None:
        return ctx.target, ctx.folder.msas, ctx.precomputed
    chain = next(c for c in ctx.target.chains if c.id == chain_id)
    precomputed = ctx.precomputed / chain_id if ctx.precomputed is not None else None
    return Target(f"chain_{chain_id}", chain.description, chain.sequence), ctx.folder.msas / chain_id, precomputed


def _search_key(search: searches.Search, chain_id: str | None, ctx: StageContext, inputs: Inputs) -> str:
    query, msa_dir, _ = _search_query(ctx, chain_id)
    return searches.search_key(search, query.sequence, msa_dir, ctx.cfg.db)


def _search_run(search: searches.Search, chain_id: str | None, ctx: StageContext,
                inputs: Inputs) -> tuple[list[Path], dict]:
    cpus = threads_for(int(ctx.cfg.search.cpus))
    query, msa_dir, precomputed = _search_query(ctx, chain_id)
    shared = None  # another target's folder whose result for the same sequence is copied
    if precomputed is None and not ctx.force and not searches.reusable(search, query.sequence, msa_dir, ctx.cfg.db):
        shared = precomputed = next((d for d in ctx.batch_msas.get(query.sequence, ()) if d != msa_dir
                                     and searches.reusable(search, query.sequence, d, ctx.cfg.db)), None)
    written = searches.run_search(search, query, msa_dir, ctx.cfg.db, cpus,
                                  float(ctx.cfg.search.timeout_s), reuse=not ctx.force,
                                  precomputed_dir=precomputed)
    info = {"cpus": cpus, **({"chain": chain_id} if chain_id is not None else {})}
    if shared is not None:
        info["copied_from"] = str(shared)
    return written, info


def batch_searches(cfg: DictConfig) -> list[searches.Search]:
    """The searches of the plans (a monomer's, a complex chain's) that run once for a whole batch
    (``search.batch``, e.g. MMseqs2)."""
    if not cfg.search.batch:
        return []
    plans = {s.name: s for s in (*search_plan(cfg), *search_plan(cfg, multimer=True))}
    return [s for s in plans.values() if s.run_batch is not None]


def batch_queries(search: searches.Search, ctx: StageContext) -> list[tuple[str, Target, Path]]:
    """What a batch run of `search` searches for the target of `ctx`: (its stage's name, the query, its
    msas folder) for the target itself or each distinct chain of a complex; none when the target's plan
    does not make `search` (the UniProt search of a complex's chains, for a monomer)."""
    complex_target = ctx.target.is_complex
    if search.name not in {s.name for s in search_plan(ctx.cfg, multimer=complex_target)}:
        return []
    chain_ids = [c.id for c in ctx.target.unique_chains()] if complex_target else [None]
    queries = []
    for chain_id in chain_ids:
        query, msa_dir, _ = _search_query(ctx, chain_id)
        queries.append((f"search_{search.name}" + (f"_{chain_id}" if chain_id is not None else ""), query, msa_dir))
    return queries


def run_batch_search(search: searches.Search, contexts: Sequence[StageContext]) -> dict:
    """One run of a batch search for the targets (and complexes' distinct chains) of ``contexts`` whose
    result is not valid yet.

    It only fills each target's msas folder with a result and its provenance: each target's own
    ``search_<name>`` stage then finds that result valid, reuses it and records the stage, so the stage
    cache stays per target. A failure is returned, not raised: the targets' own stages then search one
    by one and fail (or not) each on its own.
    """
    cfg = contexts[0].cfg
    cpus = threads_for(int(cfg.search.cpus))
    pairs = [(query, msa_dir) for ctx in contexts for _, query, msa_dir in batch_queries(search, ctx)]
    if not pairs:
        return {"searched": []}
    try:
        searched = searches.run_batch_search(search, pairs, cfg.db, cpus, float(cfg.search.timeout_s))
    except Exception as exc:  # noqa: BLE001 - reported; each target's own search stage runs instead
        log.warning("batch %s search failed; the targets search one by one: %s", search.name, exc)
        return {"searched": [], "error": str(exc)}
    return {"searched": searched, "cpus": cpus}


def msa_folders(target: Target, folder: TargetDir) -> list[tuple[str, Path]]:
    """(sequence, folder of its search results) of a target: ``msas/`` for a monomer, ``msas/<chain id>/``
    for each distinct chain of a complex."""
    if not target.is_complex:
        return [(target.sequence, folder.msas)]
    return [(c.sequence, folder.msas / c.id) for c in target.unique_chains()]


def batch_msa_folders(targets: Iterable[tuple[Target, TargetDir]]) -> dict[str, list[Path]]:
    """The search result folders of a batch's targets and distinct chains, by sequence
    (:attr:`StageContext.batch_msas`)."""
    by_sequence: dict[str, list[Path]] = {}
    for target, folder in targets:
        for query, msa_dir in msa_folders(target, folder):
            by_sequence.setdefault(query, []).append(msa_dir)
    return by_sequence


def run_features_in_process(contexts: Sequence[StageContext]) -> dict[str, dict[str, StageTiming] | Exception]:
    """The searches and features of each target in this process, one target after another (`af2cpu
    features`), after one run of each batch search for all of them (not with ``force``): each target's
    stage timings, or the error that stopped it. A search whose valid result another target of the batch
    already made for the same sequence (a chain shared by complexes, or a complex's chain folded alone
    too) copies it instead of searching again."""
    contexts = [dataclasses.replace(ctx, target=folding_target(ctx.cfg, ctx.target)) for ctx in contexts]
    if contexts and not any(ctx.force for ctx in contexts):
        fresh = [ctx for ctx in contexts if ctx.precomputed is None]
        for search in batch_searches(contexts[0].cfg):
            if sum(len(batch_queries(search, ctx)) for ctx in fresh) > 1:
                run_batch_search(search, fresh)
    by_sequence = batch_msa_folders((ctx.target, ctx.folder) for ctx in contexts)
    contexts = [dataclasses.replace(ctx, batch_msas=by_sequence) for ctx in contexts]
    done: dict[str, dict[str, StageTiming] | Exception] = {}
    for ctx in contexts:
        try:
            done[ctx.target.id] = run_stages(target_stages(ctx.cfg, "features", ctx.target), ctx)
        except Af2CpuError as exc:
            done[ctx.target.id] = exc
    return done


def _features_key(ctx: StageContext, inputs: Inputs) -> str:
    plan = search_plan(ctx.cfg)
    return stage_key(
        "features",
        inputs={s.output: file_hash(ctx.folder.msas / s.output) for s in plan},
        config={"template": dataclasses.asdict(searches.template_settings(ctx.cfg)), "sequence": ctx.target.sequence,
                "features_pkl": bool(ctx.cfg.output.features_pkl)},
        tool_versions={},
        databases={},
    )


def _features_run(ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    folder, target = ctx.folder, ctx.target
    plan = search_plan(ctx.cfg)
    result = raw_features.raw_features_from_files(
        target.sequence, target.description, searches.search_results(plan, folder.msas),
        searches.template_settings(ctx.cfg))
    save_features_npz(folder.features, result.features)
    outputs = [folder.features, folder.features_report]
    if ctx.cfg.output.features_pkl:
        save_features_pkl(folder.features_pkl, result.features)
        outputs.append(folder.features_pkl)
    report = {
        "id": target.id,
        "description": target.description,
        "sequence": target.sequence,
        "msa_sizes": result.msa_sizes,
        "templates": [name.decode() for name in result.features["template_domain_names"]],
        "skipped_templates": [dataclasses.asdict(s) for s in result.templates.skipped],
        "template_warnings": result.templates.warnings,
    }
    atomic_write_text(folder.features_report, json.dumps(report, indent=2) + "\n")
    return outputs, {"msa_sizes": result.msa_sizes}


def _complex_results(ctx: StageContext) -> dict[str, list[tuple[searches.Search, Path]]]:
    """Each distinct chain's search results, by sequence."""
    plan = search_plan(ctx.cfg, multimer=True)
    return {c.sequence: searches.search_results(plan, ctx.folder.msas / c.id) for c in ctx.target.unique_chains()}


def _complex_features_key(ctx: StageContext, inputs: Inputs) -> str:
    plan = search_plan(ctx.cfg, multimer=True)
    hashes = {f"{c.id}/{s.output}": file_hash(ctx.folder.msas / c.id / s.output)
              for c in ctx.target.unique_chains() for s in plan}
    chains = [[c.id, c.sequence] for c in ctx.target.chains]
    return stage_key(
        "features",
        inputs=hashes,
        config={"template": dataclasses.asdict(searches.template_settings(ctx.cfg)), "chains": chains,
                "features_pkl": bool(ctx.cfg.output.features_pkl)},
        tool_versions={},
        databases={},
    )


def _complex_features_run(ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    """A complex's features.npz: AlphaFold-Multimer's example (paired and merged MSAs, templates)."""
    folder, target = ctx.folder, ctx.target
    result = multimer.complex_features_from_files(
        [(c.id, c.sequence) for c in target.chains], _complex_results(ctx), searches.template_settings(ctx.cfg))
    save_features_npz(folder.features, result.features)
    outputs = [folder.features, folder.features_report]
    if ctx.cfg.output.features_pkl:
        save_features_pkl(folder.features_pkl, result.features)
        outputs.append(folder.features_pkl)
    first_ids = {c.sequence: c.id for c in target.unique_chains()}
    descriptions = {c.id: c.description for c in target.chains}
    msa_sizes = {first_ids[seq]: m.msa_sizes for seq, m in result.monomers.items()}
    report = {
        "id": target.id,
        "description": target.description,
        "sequence": target.sequence,
        # In the example's order (entity by entity), with the ids AlphaFold-Multimer gives them.
        "chains": [{"id": c.chain_id, "description": descriptions[c.chain_id], "entity_id": c.entity_id,
                    "sym_id": c.sym_id, "asym_id": c.asym_id, "length": len(c.sequence),
                    "searched_as": first_ids[c.sequence]} for c in result.chains],
        "msa_sizes": msa_sizes,
        "pairing_msa_sizes": {first_ids[seq]: n for seq, n in result.pairing_sizes.items()},
        "msa_rows": int(result.features["num_alignments"]),
        "templates": {first_ids[seq]: [n.decode() for n in m.features["template_domain_names"]]
                      for seq, m in result.monomers.items()},
        "template_warnings": [w for m in result.monomers.values() for w in m.templates.warnings],
    }
    atomic_write_text(folder.features_report, json.dumps(report, indent=2) + "\n")
    return outputs, {"msa_sizes": msa_sizes, "msa_rows": report["msa_rows"]}


def _existing_features_key(ctx: StageContext, inputs: Inputs) -> str:
    """The features of a split workflow, made earlier by `af2cpu features`: their record's key."""
    path = ctx.folder.features
    if not path.is_file():
        raise InputError(
            f"{path} does not exist: run `af2cpu features` for {ctx.target.id} with the same --out first, "
            "or `af2cpu predict` to search and fold in one go"
        )
    info = ctx.folder.read_info() or {}
    if info.get("sequence", ctx.target.sequence) != ctx.target.sequence:
        raise InputError(f"{path} was made for another sequence than record {ctx.target.id!r}; rerun `af2cpu features`")
    record = StageCache(ctx.folder).lookup("features")
    return record.key if record is not None else f"external:{file_hash(path)}"


def _existing_features_run(ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    # Reached only for a features.npz that no `af2cpu features` run recorded: it is taken as it is.
    return [ctx.folder.features], {}


# ---------------------------------------------------------------------------------------------
# Inference


def _infer_memory(cfg: DictConfig, elsewhere: bool, model_name: str, residues: int) -> int:
    """The planner's peak for one pass of ``model_name`` at its preset's largest inputs (a multimer's
    in-network sample sizes) for a target of ``residues`` residues, all chains together; the larger of
    fp32 and bf16 where ``runtime.precision=auto`` resolves on the CPUs of other machines (``elsewhere``)."""
    preset = get_preset(model_name)
    shape = TargetShape.largest(preset, residues)
    # Unchunked: the largest the pass can need.
    return max(estimate_peak_memory(shape, precision, architecture=preset.architecture,
                                    representations=bool(cfg.output.save_representations)).total
               for precision in planning_precisions(cfg.runtime.precision, elsewhere))


def _infer_options(cfg: DictConfig, preset: Preset, features: Path) -> tuple[Options, TargetShape]:
    """The network's run options for a pass on the features file ``features`` (a monomer's raw features, a
    complex's multimer example), planned from its arrays' shapes alone: the key of an inference and its
    run take the same decisions (chunks, compact outputs) without processing the features."""
    shapes = npz_shapes(features)
    alignments = None
    if preset.multimer and "num_alignments" in shapes:
        alignments = int(load_features_npz(features, ["num_alignments"])["num_alignments"])
    shape = TargetShape.of_raw_features(preset, shapes, alignments)
    limit = memory_limit(cfg)
    try:
        options, _ = plan_options(cfg.runtime, preset, shape, limit=limit,
                                  representations=bool(cfg.output.save_representations))
    except MemoryPlanError as exc:
        if limit == _worker_share(cfg):
            raise MemoryPlanError(f"{exc}. This Dask worker may use {limit / GIB:.2f} GiB, its share of the memory: "
                                  "fewer workers (scheduler.n_workers) give each more") from None
        raise
    return options, shape


def memory_limit(cfg: DictConfig) -> int:
    """The bytes an inference may plan with: ``runtime.memory_limit``; with ``auto``, inside a Dask worker,
    the smaller of the available memory and the worker's own limit. The available memory is the whole
    machine's (or job's): a local cluster's workers each have their share of it (the memory divided
    between them), a dask-jobqueue job's workers the job's memory divided between its processes, and
    concurrent inferences that each planned for all of it could together exceed it."""
    limit = parse_memory_limit(str(cfg.runtime.memory_limit))
    share = _worker_share(cfg)
    return limit if share is None else min(limit, share)


def _worker_share(cfg: DictConfig) -> int | None:
    """With ``runtime.memory_limit=auto``, this Dask worker's memory limit in bytes; None for a set limit,
    outside a worker, or where the worker has none."""
    if not is_auto(cfg.runtime.memory_limit):
        return None
    from distributed import get_worker  # deferred: Dask is loaded where stages run, not by the planner

    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask task
        return None
    return getattr(getattr(worker, "memory_manager", None), "memory_limit", None) or None


def _infer_key(run: weights.ModelRun, ctx: StageContext, inputs: Inputs) -> str:
    import torch  # deferred: torch is imported only in processes that run (or key) a model

    cfg = ctx.cfg
    stage = f"infer_{run.name}"
    options, _ = _infer_options(cfg, get_preset(run.preset), ctx.folder.features)
    num_recycle, early_stop = weights.recycling(cfg, run.preset)
    config = {
        "params": weights.params_identity(cfg, run.preset),
        "num_recycle": num_recycle,
        "early_stop": early_stop,
        "seed": run.seed,
        # The precision this CPU runs (auto resolves per CPU): a cache shared by machines with and
        # without native bf16 never hands one's results to the other.
        "precision": str(as_precision(cfg.runtime.precision)),
        "output": _plain(cfg.output),
        # Whether the result holds the (L, L, bins) arrays and the representations: the planner leaves them
        # out of a target that does not fit runtime.memory_limit with them, so a changed limit reruns only
        # the inferences whose outputs it changes.
        "compact_outputs": options.compact_outputs,
    }
    if run.multimer:
        config["prediction"] = run.prediction
    return stage_key(
        stage,
        inputs={ctx.folder.features.name: file_hash(ctx.folder.features)},
        config=config,
        tool_versions={"torch": torch.__version__},
        databases={},
    )


def _infer_run(run: weights.ModelRun, ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    """One prediction: a monomer preset on its processed features (seeded), or a multimer preset on the
    complex's example as it is (the network samples its MSA from the seed and the prediction index)."""
    import torch  # deferred: see _infer_key

    cfg, folder = ctx.cfg, ctx.folder
    preset = get_preset(run.preset)
    num_recycle, early_stop = weights.recycling(cfg, run.preset)
    # Planned first, right after the key was: runtime.memory_limit=auto reads the available memory, which
    # loading the features lowers.
    options, shape = _infer_options(cfg, preset, folder.features)
    raw = load_features_npz(folder.features)
    features = raw
    if not preset.multimer:
        settings = PipelineSettings.from_preset(preset, num_recycle=num_recycle)
        features = process_features(raw, settings, seed=run.seed)
    if options.compact_outputs:
        log.info("%s: %d residues: compact outputs within runtime.memory_limit=%s (no distogram logits, "
                 "aligned-confidence probabilities or pair/MSA representations in result_%s.npz)",
                 run.name, shape.residues, cfg.runtime.memory_limit, run.name)
    threads = threads_for(int(cfg.runtime.threads))
    torch.set_num_threads(threads)
    model = weights.load_model(cfg, run.preset, options)
    out = model.predict(
        features,
        num_recycle=num_recycle,
        early_stop_tolerance=early_stop,
        return_recycles=bool(cfg.output.save_recycles),
        return_representations=bool(cfg.output.save_representations),
        **({"random_seed": run.seed, "prediction_index": run.prediction} if preset.multimer else {}),
    )
    if cfg.output.save_recycles:
        out["recycles"] = [
            {"final_atom_positions": r["structure_module"]["final_atom_positions"], "plddt": r["plddt"]}
            for r in out["recycles"]
        ]
    outputs = formats.write_model_outputs(folder, run.name, out)
    # The example's own residues and chains (multimer), or the first recycle slice of the processed ones.
    structure_features = features if preset.multimer else {name: value[0] for name, value in features.items()}
    atomic_write_text(folder.unrelaxed(run.name),
                      protein.to_pdb(formats.protein_from_prediction(structure_features, out)))
    outputs.append(folder.unrelaxed(run.name))
    info = {
        "mean_plddt": float(np.mean(out["plddt"])),
        "ranking_confidence": float(out["ranking_confidence"]),
        "ptm": float(out["ptm"]) if "ptm" in out else None,
        "num_recycles": int(out["num_recycles"]),
        "chunks": dataclasses.asdict(options.chunks),
        "threads": torch.get_num_threads(),
    }
    if preset.multimer:
        info.update(iptm=float(out["iptm"]), seed=run.seed)
    return outputs, info


# ---------------------------------------------------------------------------------------------
# Ranking, relaxation, final files


def _rank_run(multimer: bool, ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    """``ranking_debug.json`` from the models' confidences (mean pLDDT for monomers, 0.8 ipTM + 0.2 pTM
    for a multimer, under ``iptm+ptm`` as AlphaFold-Multimer writes it); the order, best first, in its info."""
    infers = {name.removeprefix("infer_"): timing.info for name, timing in inputs.items()}
    confidences = {model: info["ranking_confidence"] for model, info in infers.items()}
    ptms = {model: info["ptm"] for model, info in infers.items() if info.get("ptm") is not None}
    text = formats.ranking_debug_json(confidences, multimer=multimer, ptms=None if multimer else ptms or None,
                                      untrained_params=ctx.cfg.params == Params.random)
    atomic_write_text(ctx.folder.ranking_debug, text + "\n")
    return [ctx.folder.ranking_debug], {"order": formats.rank_models(confidences)}


def _relaxed_model(index: int, inputs: Inputs) -> str:
    return inputs["rank"].info["order"][index]


def _relax_config(ctx: StageContext) -> dict:
    return {k: v for k, v in _plain(ctx.cfg.relax).items() if k != "mode"}


def _relax_record(index: int, ctx: StageContext, inputs: Inputs) -> str:
    return f"relax_{_relaxed_model(index, inputs)}"


def _relax_key(index: int, ctx: StageContext, inputs: Inputs) -> str:
    stage = _relax_record(index, ctx, inputs)
    unrelaxed = ctx.folder.unrelaxed(_relaxed_model(index, inputs))
    return stage_key(stage, {"unrelaxed": file_hash(unrelaxed)}, _relax_config(ctx), {}, {})


def _relax_run(index: int, ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    """Amber-relax one model's structure; a relax failure keeps the unrelaxed one and is recorded."""
    folder, model_name = ctx.folder, _relaxed_model(index, inputs)
    threads = threads_for(int(ctx.cfg.relax.threads))
    try:
        pdb_text, report = relax(folder.unrelaxed(model_name).read_text(), config=ctx.cfg.relax, threads=threads)
        report_dict = report.to_dict()
    except InputError as exc:  # e.g. an X residue Amber cannot parametrise, as AlphaFold2 refuses too
        pdb_text, report_dict = "", {"relaxed": False, "failure": str(exc)}
    atomic_write_text(folder.relax_report(model_name), json.dumps(report_dict, indent=2) + "\n")
    outputs = [folder.relax_report(model_name)]
    if report_dict.get("relaxed"):
        atomic_write_text(folder.relaxed(model_name), pdb_text)
        outputs.append(folder.relaxed(model_name))
    else:
        log.warning("%s: relaxation of %s failed (%s); keeping the unrelaxed structure",
                    folder.id, model_name, report_dict.get("failure"))
    return outputs, {"relaxed": bool(report_dict.get("relaxed")), "failure": report_dict.get("failure")}


def _finalize_run(ctx: StageContext, inputs: Inputs) -> tuple[list[Path], dict]:
    """Ranked PDB/mmCIF (relaxed where available), plots, ``timings.json``; the target's summary in its info."""
    folder, target = ctx.folder, ctx.target
    order = inputs["rank"].info["order"]
    pdbs, cifs = {}, {}
    for name in order:
        pdbs[name] = folder.best_structure(name).read_text()
        cifs[name] = protein.to_mmcif(protein.from_pdb_string(pdbs[name]), file_id=f"{target.id}_{name}")
    formats.write_ranked_structures(folder, order, pdbs, cifs)

    results = {name: load_result_npz(folder.result(name), prefixes=[
        "plddt", "predicted_aligned_error", "max_predicted_aligned_error", "ptm", "iptm"]) for name in order}
    title = target.id + (" (UNTRAINED random params)" if ctx.cfg.params == Params.random else "")
    plots.write_target_plots(folder, order, title, msa_title=target.id)

    spans = {t.name: (t.start, t.end) for t in inputs.values() if t.recorded}
    atomic_write_text(folder.timings, formats.timings_json(spans) + "\n")
    best = order[0]
    summary = {
        "best_model": best,
        "mean_plddt": float(np.mean(results[best]["plddt"])),
        "ptm": float(results[best]["ptm"]) if "ptm" in results[best] else None,
        "length": target.num_residues,
        "seconds": {name: round(end - start, 3) for name, (start, end) in spans.items()},
    }
    if "iptm" in results[best]:
        summary["iptm"] = float(results[best]["iptm"])
    return [], summary


# ---------------------------------------------------------------------------------------------
# The declaration


def search_plan(cfg: DictConfig, multimer: bool = False) -> list[searches.Search]:
    """The searches of the configured database preset and search protocol (``multimer``: those of each
    distinct chain of a complex)."""
    pipeline = searches.MULTIMER if multimer else searches.MONOMER
    return searches.plan_searches(cfg.db.preset, pipeline=pipeline, protocol=cfg.search.protocol)


def search_stages(cfg: DictConfig, target: Target | None = None) -> list[Stage]:
    """One stage per search of the configured database preset's plan; for a complex, one per search of
    the multimer plan and distinct chain (``search_<name>_<chain id>``: a homomer's chain once)."""
    cpus = int(cfg.search.cpus) or 1
    complex_target = target is not None and target.is_complex
    chains = [(c.id, c.sequence) for c in target.unique_chains()] if complex_target else [
        (None, target.sequence if target is not None else None)]
    plan = search_plan(cfg, multimer=complex_target)

    def name(search_name: str, chain_id: str | None) -> str:
        return f"search_{search_name}" + (f"_{chain_id}" if chain_id is not None else "")
    return [
        Stage(name(s.name, c), functools.partial(_search_run, s, c), functools.partial(_search_key, s, c),
              needs=tuple(name(n, c) for n in s.needs), cpus=cpus,
              shares=f"search {s.name} {sequence}" if sequence is not None else None)
        for c, sequence in chains for s in plan
    ]


def folding_target(cfg: DictConfig, target: Target) -> Target:
    """``target`` as this configuration folds it: a single chain with ``model.kind=multimer`` becomes a
    complex of one chain (AlphaFold2's monomer-in-multimer run: the complexes' searches and features)."""
    if not target.is_complex and weights.folds_as_multimer(cfg, False):
        return dataclasses.replace(target, multimer=True)
    return target


def target_stages(cfg: DictConfig, mode: str = "predict", target: Target | None = None,
                  elsewhere: bool | None = None) -> list[Stage]:
    """The stages of a target in dependency order.

    ``mode``: "predict" (everything), "features" (searches and raw features: `af2cpu features`) or
    "infer" (from the features an earlier `af2cpu features` wrote: `af2cpu infer`). A complex (`target` of
    several chains, or one chain with ``model.kind=multimer``) has each distinct chain's searches, the
    multimer example, and one inference per multimer preset and prediction (``model.multimer_names``,
    ``model.num_predictions_per_model``); a monomer (or ``target`` None) one per ``model.names``.
    ``elsewhere``: whether the stages run on other machines than this process (a SLURM array task);
    None: where the Dask workers of ``cfg.scheduler`` do (a dask-jobqueue cluster or an attached
    scheduler's workers) — what the inferences' memory estimates plan for under ``runtime.precision=auto``.
    """
    if mode not in ("predict", "features", "infer"):
        raise ValueError(f"mode must be predict, features or infer, not {mode!r}")
    if target is not None:
        target = folding_target(cfg, target)
    multimer = target is not None and target.is_complex
    if mode == "infer":
        stages = [Stage("features", _existing_features_run, _existing_features_key, redo_on_force=False)]
    else:
        stages = search_stages(cfg, target)
        run, key = (_complex_features_run, _complex_features_key) if multimer else (_features_run, _features_key)
        stages.append(Stage("features", run, key, needs=tuple(s.name for s in stages)))
    if mode == "features":
        return stages
    try:
        runs = weights.model_runs(cfg, multimer)
    except Af2CpuError as exc:
        if target is None:
            raise
        raise InputError(f"{target.id} ({len(target.chains)} chain(s)): {exc}") from None
    threads = int(cfg.runtime.threads) or None
    if elsewhere is None:
        elsewhere = bool(cfg.scheduler.address) or ClusterKind(cfg.scheduler.kind) != ClusterKind.local
    infers = [
        Stage(f"infer_{run.name}", functools.partial(_infer_run, run), functools.partial(_infer_key, run),
              needs=("features",), cpus=threads, memory=functools.partial(_infer_memory, cfg, elsewhere, run.preset))
        for run in runs
    ]
    stages += infers
    stages.append(Stage("rank", functools.partial(_rank_run, multimer), needs=tuple(s.name for s in infers)))
    relax_cpus = int(cfg.relax.threads) or 1
    stages += [
        Stage(f"relax_{i}", functools.partial(_relax_run, i), functools.partial(_relax_key, i), needs=("rank",),
              cpus=relax_cpus, record=functools.partial(_relax_record, i))
        for i in range(cfg.relax.mode.count(len(runs)))
    ]
    stages.append(Stage("finalize", _finalize_run, needs=tuple(s.name for s in stages)))
    return stages
