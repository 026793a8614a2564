"""A batch run: every record of a FASTA file through its declared stages on a Dask cluster.

This is what `af2cpu predict`, `af2cpu infer` and the Python API ``af2cpu.predict`` run. Before any
work (:func:`check_before_work`): the configuration, the model names and parameter files (a quick
look at each file's zip directory, not a load), the tools and databases of the searches, the records,
the output folder and each target's fit in memory are checked; then each target is locked (job-array shards may share the
folder), its stages are submitted to the cluster, and the batch summary is written at the end. A target
that fails is reported and the others finish.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from af2cpu.config import ModelKind, Params, compose_config
from af2cpu.databases import check_databases, fix_hint
from af2cpu.errors import Af2CpuError, DatabaseError
from af2cpu.layout import BatchDir
from af2cpu.model import weights
from af2cpu.model.memory import MemoryPlanError, TargetShape, plan_options
from af2cpu.model.presets import get_preset
from af2cpu.preprocessing.binaries import find_binary
from af2cpu.preprocessing.inputs import Target, read_fasta_batch
from af2cpu.preprocessing.searches import MONOMER, MULTIMER, required_databases, required_tools
from af2cpu.runtime.memory import parse_memory_limit
from af2cpu.scheduler.cache import LockTimeout, StageCache
from af2cpu.scheduler.cluster import start_cluster, starts_worker_jobs
from af2cpu.scheduler.graph import BatchGraph, TargetOutcome
from af2cpu.scheduler.progress import Progress
from af2cpu.scheduler.report import collect
from af2cpu.scheduler.sharding import resolve_array_task, select_shard
from af2cpu.scheduler.slurm import largest_memory_need
from af2cpu.scheduler.stages import target_stages
from af2cpu.summary import TargetSummary, merge_batch_summary

log = logging.getLogger("af2cpu.predict")

EXIT_PARTIAL = 3


@dataclasses.dataclass
class BatchResult:
    """What a batch run did: one outcome per target, invalid records, where the outputs are."""

    out_dir: Path
    outcomes: list[TargetOutcome]
    invalid_records: list[str]

    @property
    def failed(self) -> list[str]:
        return [o.target.id for o in self.outcomes if o.status != "done"] + self.invalid_records

    @property
    def exit_status(self) -> int:
        """0 all done, 1 none done, 3 some failed (partial)."""
        done = sum(o.status == "done" for o in self.outcomes)
        if not self.failed:
            return 0
        return EXIT_PARTIAL if done else 1


def check_before_work(cfg, models: bool = True, searches: bool = True, multimer: Sequence[bool] = (False,)) -> None:
    """Raise an Af2CpuError (one line: what and what to do) for anything that would fail later: an unknown
    model name, a missing or damaged parameter file of the presets that fold the ``multimer`` kinds of
    targets (monomers, complexes or both), a missing tool or database of the searches."""
    if models:
        weights.check_params(cfg, multimer)
    if searches:
        # The searches of the configured protocol, for monomers and/or complexes' chains.
        pipelines = {MULTIMER if kind else MONOMER for kind in multimer}
        protocol = str(cfg.search.protocol)
        for tool in sorted(set().union(*(required_tools(cfg.db.preset, p, protocol) for p in pipelines))):
            find_binary(tool)
        needed = set().union(*(required_databases(cfg.db.preset, p, protocol) for p in pipelines))
        missing = [s for s in check_databases(cfg.db, needed) if s.required and not s.ok]
        if missing:
            problems = "; ".join(f"{s.name}: {s.problem}" for s in missing)
            raise DatabaseError(f"database(s) for db={cfg.db.preset} not usable: {problems}. {fix_hint(cfg.db.preset)}")


def too_long(targets: Sequence[Target], cfg) -> dict[str, str]:
    """Targets that cannot fit in memory even with the smallest chunks (a complex: all its chains
    together, with the multimer presets): {target id: the numbers}."""
    limit = parse_memory_limit(str(cfg.runtime.memory_limit))
    refused = {}
    for target in targets:
        multimer = weights.folds_as_multimer(cfg, target.is_complex)
        try:
            for name in weights.preset_names(cfg, multimer):
                plan_options(cfg.runtime, get_preset(name), TargetShape(target.num_residues, 1, 1, 0), limit=limit)
        except MemoryPlanError as exc:
            chains = f" ({len(target.chains)} chains)" if len(target.chains) > 1 else ""
            refused[target.id] = f"{target.id}{chains}, {target.num_residues} residues: {exc}"
    return refused


def run_batch(
    fasta: str | os.PathLike,
    out: str | os.PathLike = "af2cpu_out",
    overrides: Sequence[str] | None = None,
    force: bool = False,
    quiet: bool = False,
    precomputed_msas: str | os.PathLike | None = None,
    targets_filter: Sequence[str] | None = None,
    require_features: bool = False,
    complex: bool = False,
) -> BatchResult:
    """Predict every record of `fasta` into `out`; returns a BatchResult (also for partial failure).

    `overrides` are the CLI's Hydra overrides (e.g. ``["params=random", "relax=none"]``).
    `targets_filter` restricts the run to these target ids (job-array shards).
    `require_features` runs no search: each target's features.npz must be there already (written by
    `af2cpu features`, e.g. on other nodes), as `af2cpu infer` does.
    """
    cfg = compose_config(list(overrides or []))
    targets, invalid = read_fasta_batch(fasta, complex=complex)
    if targets_filter is not None:
        wanted = set(targets_filter)
        targets = [t for t in targets if t.id in wanted]
    # The presets of the kinds this batch folds: a monomer batch needs no multimer parameters.
    kinds = [weights.folds_as_multimer(cfg, t.is_complex) for t in targets]
    outcomes: list[TargetOutcome] = []
    if cfg.model.kind == ModelKind.monomer:  # no multimer presets: complexes fail, the rest is folded
        for target in [t for t in targets if t.is_complex]:
            outcomes.append(TargetOutcome(target, "failed", failed_stage="input", failure=(
                f"{target.id} is a complex of {len(target.chains)} chain(s) and model.kind=monomer folds single "
                "chains only: use model=auto (the default) or model=multimer")))
        targets, kinds = [t for t in targets if not t.is_complex], [False]
    check_before_work(cfg, searches=not require_features, multimer=kinds or [False])
    if cfg.params == Params.random:
        log.warning("params=random: UNTRAINED random weights; the structures are not predictions")
    for error in invalid:
        log.error("skipping invalid record: %s", error)
    if complex and targets and len(targets[0].chains) == 1:
        log.warning("--complex with a single chain: %s is folded by AlphaFold-Multimer as a complex of one "
                    "chain (a monomer-in-multimer run, as AlphaFold2's multimer preset does)", targets[0].id)
    batch = BatchDir(out)
    batch.prepare()
    mode = "infer" if require_features else "predict"
    stages = {t.id: target_stages(cfg, mode, t) for t in targets}
    refused = too_long(targets, cfg)
    for target in [t for t in targets if t.id in refused]:
        outcomes.append(TargetOutcome(target, "failed", failure=refused[target.id], failed_stage="memory plan"))
    runnable = [t for t in targets if t.id not in refused]

    locks = {}
    for target in list(runnable):
        folder = batch.target(target.id)
        folder.path.mkdir(parents=True, exist_ok=True)
        lock = StageCache(folder).lock()
        if lock.acquire(timeout=0):
            locks[target.id] = lock
        else:
            runnable.remove(target)
            reason = f"another live af2cpu run holds {lock.path}"
            outcomes.append(TargetOutcome(target, "failed", failure=reason, failed_stage="lock"))
    try:
        if runnable:
            memory = parse_memory_limit(str(cfg.runtime.memory_limit))
            # Worker jobs are sized for the batch's largest stage (scheduler.memory=auto), as array tasks are.
            need = largest_memory_need(runnable, lambda t: stages[t.id]) if starts_worker_jobs(cfg.scheduler) else None
            with start_cluster(cfg.scheduler, memory_limit=memory, model_threads=int(cfg.runtime.threads),
                               need=need) as handle:
                if handle.dashboard_link and not quiet:
                    log.info("Dask dashboard: %s", handle.dashboard_link)
                progress = Progress({t.id: len(stages[t.id]) for t in runnable}, quiet=quiet)
                graph = BatchGraph(handle.client, cfg, batch, lambda t: stages[t.id], force=force, progress=progress,
                                   precomputed_msas=Path(precomputed_msas) if precomputed_msas else None)
                try:
                    with progress:
                        for outcome in graph.run(runnable):
                            progress.finish_target(outcome.target.id, outcome.status, outcome.failure or "")
                            outcomes.append(outcome)
                except KeyboardInterrupt:
                    graph.cancel()
                    log.error("interrupted: finished stages are kept; run the same command again to resume")
                    raise
    except LockTimeout as exc:
        raise Af2CpuError(str(exc)) from None
    finally:
        for lock in locks.values():
            lock.release()

    updates = [TargetSummary(error.record_id, "skipped", failure_reason=str(error)) for error in invalid]
    for outcome in outcomes:
        s = outcome.summary
        updates.append(TargetSummary(
            target_id=outcome.target.id,
            status=outcome.status,
            length=len(outcome.target.sequence),
            best_model=s.get("best_model"),
            mean_plddt=s.get("mean_plddt"),
            ptm=s.get("ptm"),
            iptm=s.get("iptm"),
            failure_reason=outcome.failure,
            untrained_params=cfg.params == Params.random,
        ))
    merge_batch_summary(batch, updates, rebuild=lambda: [s for s in collect(batch.path) if s.status != "pending"])
    return BatchResult(batch.path, outcomes, [str(e) for e in invalid])


def array_shard(fasta: str | os.PathLike, index: int | None, count: int | None, environ) -> list[str] | None:
    """The target ids of this job-array task's shard of `fasta`, or None outside a job array.

    Every task computes the same split from the FASTA alone, so shards never overlap. A bad index or
    count is a ConfigError raised before anything is written.
    """
    task = resolve_array_task(index, count, environ)
    if task is None:
        return None
    targets, _ = read_fasta_batch(fasta)
    shard = select_shard({t.id: t.num_residues for t in targets}, task)
    log.info("array task %d of %d (%s): %d target(s): %s", task.index, task.count, task.source, len(shard),
             " ".join(shard))
    return shard
