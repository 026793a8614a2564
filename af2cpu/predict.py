"""`af2cpu predict seq.fasta [--out DIR] [key=value ...]`: the whole pipeline on a Dask cluster.

For every FASTA record: MSA and template searches (in parallel), features, every model preset
(`model.names`), ranking, Amber relaxation (`relax=best|all|none`), and AlphaFold2's output files in
``DIR/<target id>/``, plus a batch summary (``summary.json``, ``summary.tsv``) at the top of DIR.
Finished stages are kept: the same command run again (after a crash, a kill or Ctrl-C) resumes
where it stopped; ``--force`` redoes everything. A target that fails is reported and the others
finish. Exit status: 0 all done, 1 none done, 3 some failed (partial), 2 bad input or setup.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from af2cpu.errors import Af2CpuError, InputError

log = logging.getLogger("af2cpu.predict")

MARKER = ".af2cpu-output"  # marks a folder as af2cpu's, so a foreign folder is never written into
EXIT_PARTIAL = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fasta", help="FASTA file with one or many protein sequences")
    parser.add_argument("--out", default="af2cpu_out", help="output folder (default: ./af2cpu_out)")
    parser.add_argument("--force", action="store_true", help="redo every stage, even those already finished")
    parser.add_argument("--precomputed-msas", metavar="DIR",
                        help="folder with <target id>/msas/ from an earlier run, reused when made for the same "
                        "sequence and databases")
    parser.add_argument("--quiet", action="store_true", help="only errors and the final summary")
    parser.add_argument("--array-index", type=int, metavar="I",
                        help="run only shard I (0-based) of a job array; default: from SLURM/PBS/SGE variables")
    parser.add_argument("--array-count", type=int, metavar="N",
                        help="number of shards of the job array; default: from SLURM/SGE variables")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2 relax=none")


@dataclasses.dataclass
class BatchResult:
    """What `predict` did: one outcome per target, invalid records, where the outputs are."""

    out_dir: Path
    outcomes: list  # af2cpu.scheduler.graph.TargetOutcome
    invalid_records: list[str]

    @property
    def failed(self) -> list[str]:
        return [o.target.id for o in self.outcomes if o.status != "done"] + self.invalid_records

    @property
    def exit_status(self) -> int:
        done = sum(o.status == "done" for o in self.outcomes)
        if not self.failed:
            return 0
        return EXIT_PARTIAL if done else 1


def prepare_output_folder(out_dir: Path) -> None:
    """Create or reuse `out_dir`; refuse an unwritable folder or one with foreign content."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder; choose another --out")
    if out_dir.is_dir() and not (out_dir / MARKER).exists() and any(out_dir.iterdir()):
        raise InputError(
            f"--out {out_dir} is not empty and was not made by af2cpu; choose an empty or new folder "
            f"(or `touch {out_dir / MARKER}` to let af2cpu write into it)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).touch()
    except OSError as exc:
        raise InputError(f"cannot write to --out {out_dir}: {exc.strerror}; choose a writable folder") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"cannot write to --out {out_dir}; choose a writable folder")


def check_fits_in_memory(targets, cfg) -> dict[str, str]:
    """Targets that cannot fit in memory even with the smallest chunks: {target id: the numbers}."""
    from af2cpu.model.memory import MemoryPlanError, TargetShape, plan_options
    from af2cpu.model.presets import get_preset
    from af2cpu.runtime.memory import parse_memory_limit

    limit = parse_memory_limit(str(cfg.runtime.memory_limit))
    presets = [get_preset(name) for name in cfg.model.names]
    too_long = {}
    for target in targets:
        try:
            for preset in presets:
                plan_options(cfg.runtime, preset, TargetShape(len(target.sequence), 1, 1, 0), limit)
        except MemoryPlanError as exc:
            too_long[target.id] = str(exc)
    return too_long


def predict(
    fasta: str | os.PathLike,
    out: str | os.PathLike = "af2cpu_out",
    overrides: Sequence[str] | None = None,
    force: bool = False,
    quiet: bool = False,
    precomputed_msas: str | os.PathLike | None = None,
    targets_filter: Sequence[str] | None = None,
    require_features: bool = False,
) -> BatchResult:
    """Predict every record of `fasta` into `out`; returns a BatchResult (also for partial failure).

    `overrides` are the CLI's Hydra overrides (e.g. ``["params=random", "relax=none"]``).
    `targets_filter` restricts the run to these target ids (job-array shards).
    `require_features` runs no search: each target's features.npz must be there already (written by
    `af2cpu features`, e.g. on other nodes), as `af2cpu infer` does.
    Open a finished target with ``af2cpu.load_result(out / target_id)``.
    """
    from af2cpu.config import compose_config
    from af2cpu.outputs import TargetSummary, read_batch_summary, write_batch_summary
    from af2cpu.pipeline import check_params
    from af2cpu.preprocessing.inputs import read_fasta_batch
    from af2cpu.runtime.memory import parse_memory_limit
    from af2cpu.scheduler.cache import LockTimeout, StageCache
    from af2cpu.scheduler.cluster import start_cluster
    from af2cpu.scheduler.graph import BatchGraph, TargetOutcome
    from af2cpu.scheduler.progress import Progress

    cfg = compose_config(list(overrides or []))
    check_params(cfg)
    if cfg.params == "random":
        log.warning("params=random: UNTRAINED random weights; the structures are not predictions")
    targets, invalid = read_fasta_batch(fasta)
    for error in invalid:
        log.error("skipping invalid record: %s", error)
    if targets_filter is not None:
        wanted = set(targets_filter)
        targets = [t for t in targets if t.id in wanted]
    out_dir = Path(out)
    prepare_output_folder(out_dir)

    outcomes: list = []
    too_long = check_fits_in_memory(targets, cfg)
    for target in [t for t in targets if t.id in too_long]:
        outcomes.append(TargetOutcome(target, "failed", failure=too_long[target.id], failed_stage="memory plan"))
    runnable = [t for t in targets if t.id not in too_long]

    locks = {}
    for target in list(runnable):
        (out_dir / target.id).mkdir(parents=True, exist_ok=True)
        lock = StageCache(out_dir / target.id).lock()
        if lock.acquire(timeout=0):
            locks[target.id] = lock
        else:
            runnable.remove(target)
            reason = f"another live af2cpu run holds {lock.path}"
            outcomes.append(TargetOutcome(target, "failed", failure=reason, failed_stage="lock"))
    try:
        if runnable:
            memory = parse_memory_limit(str(cfg.runtime.memory_limit))
            with start_cluster(cfg.scheduler, memory_limit=memory) as handle:
                if handle.dashboard_link and not quiet:
                    log.info("Dask dashboard: %s", handle.dashboard_link)
                progress = Progress([t.id for t in runnable], quiet=quiet)
                graph = BatchGraph(handle.client, cfg, out_dir, force=force, progress=progress,
                                   precomputed_msas=Path(precomputed_msas) if precomputed_msas else None,
                                   require_features=require_features)
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

    by_id = {s.target_id: s for s in (read_batch_summary(out_dir) if (out_dir / "summary.json").is_file() else [])}
    for outcome in outcomes:
        s = outcome.summary
        by_id[outcome.target.id] = TargetSummary(
            target_id=outcome.target.id,
            status=outcome.status,
            length=len(outcome.target.sequence),
            best_model=s.get("best_model"),
            mean_plddt=s.get("mean_plddt"),
            ptm=s.get("ptm"),
            failure_reason=outcome.failure,
            untrained_params=cfg.params == "random",
        )
    write_batch_summary(out_dir, list(by_id.values()))
    return BatchResult(out_dir, outcomes, [str(e) for e in invalid])


def array_shard(fasta: str | os.PathLike, index: int | None, count: int | None, environ) -> list[str] | None:
    """The target ids of this job-array task's shard of `fasta`, or None outside a job array.

    Every task computes the same split from the FASTA alone, so shards never overlap. A bad index or
    count is a ConfigError raised before anything is written.
    """
    from af2cpu.preprocessing.inputs import read_fasta_batch
    from af2cpu.scheduler.sharding import resolve_array_task, select_shard

    task = resolve_array_task(index, count, environ)
    if task is None:
        return None
    targets, _ = read_fasta_batch(fasta)
    shard = select_shard({t.id: len(t.sequence) for t in targets}, task)
    log.info("array task %d of %d (%s): %d target(s): %s", task.index, task.count, task.source, len(shard),
             " ".join(shard))
    return shard


def run(args: argparse.Namespace, require_features: bool = False) -> int:
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    shard = array_shard(args.fasta, args.array_index, args.array_count, os.environ)
    result = predict(args.fasta, args.out, args.overrides, force=args.force, quiet=args.quiet,
                     precomputed_msas=args.precomputed_msas, targets_filter=shard,
                     require_features=require_features)
    for outcome in result.outcomes:
        if outcome.status == "done":
            s = outcome.summary
            ptm = f", pTM {s['ptm']:.3f}" if s.get("ptm") is not None else ""
            print(f"{outcome.target.id}: done — best {s['best_model']}, mean pLDDT {s['mean_plddt']:.1f}{ptm}")
        else:
            print(f"{outcome.target.id}: FAILED at {outcome.failed_stage}: {outcome.failure}")
    for record in result.invalid_records:
        print(f"invalid record skipped: {record}")
    total = len(result.outcomes) + len(result.invalid_records)
    print(f"{total - len(result.failed)} of {total} target(s) done; summary in {result.out_dir / 'summary.tsv'}")
    return result.exit_status
