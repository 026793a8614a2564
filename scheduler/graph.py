"""The Dask task graph of a batch: each target's declared stages (``af2cpu.scheduler.stages``) as tasks.

Tasks carry resources (`cpus`, as each stage declares) so that the searches of several targets,
inference and relaxation share the workers' cores without oversubscription; longer targets get a higher
priority so they start first. A failed task is retried (`scheduler.retries`); a target whose task still
fails is reported with the reason while the others finish. A failed attempt's full error, traceback
included, goes to the target's ``af2cpu.log``; the console gets one line per failed target (the
workers' own "Compute Failed" reports are kept off it by :class:`WorkerHygiene`, which also kills the
tools a worker still runs when it closes or is terminated).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from distributed import Client, Future, as_completed
from distributed.diagnostics.plugin import WorkerPlugin
from omegaconf import DictConfig

from af2cpu.errors import Af2CpuError
from af2cpu.layout import BatchDir, TargetDir, precomputed_msas
from af2cpu.preprocessing.inputs import Target, chains_json
from af2cpu.preprocessing.tools import kill_running_tools
from af2cpu.scheduler.stages import (
    Stage,
    StageContext,
    StageTiming,
    batch_msa_folders,
    batch_queries,
    batch_searches,
    folding_target,
    run_batch_search,
    run_stage,
)

log = logging.getLogger(__name__)

# Progress events: (target id, stage name, state) with state "running", "done", "cached", "failed".
ProgressCallback = Callable[[str, str, str], None]


@dataclasses.dataclass
class TargetOutcome:
    """How one target ended."""

    target: Target
    status: str  # "done" | "failed"
    summary: dict = dataclasses.field(default_factory=dict)
    failure: str | None = None
    failed_stage: str | None = None


def _worker_cpus(client: Client) -> int | None:
    """The smallest `cpus` resource of the workers, or None when they advertise none."""
    workers = client.scheduler_info().get("workers", {})
    cpus = [w.get("resources", {}).get("cpus") for w in workers.values()]
    if not cpus or any(c is None for c in cpus):
        return None
    return int(min(cpus))


class StageFailed(Af2CpuError):
    """A stage's error in one line; the full error and traceback are in the target's af2cpu.log."""


def log_failure(folder: TargetDir, stage: str, exc: BaseException) -> StageFailed:
    """Append ``exc`` with its traceback to the target's ``af2cpu.log``; the one-line error to raise."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        with open(folder.log, "a", encoding="utf-8") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {stage} failed\n{text}\n")
        where = f" (full error in {folder.log})"
    except OSError:
        where = ""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return StageFailed(first + where)


def _execute(stage: Stage, ctx: StageContext, *needed: StageTiming, after: object = None) -> StageTiming:
    """One stage as a Dask task; the results of the stages it needs arrive in ``stage.needs`` order
    (``after``: the batch search, or another target's search of the same sequence, that it waits for and
    whose results it reuses)."""
    try:
        return run_stage(stage, ctx, dict(zip(stage.needs, needed)))
    except Exception as exc:  # noqa: BLE001 - every failure is logged whole and reported in one line
        raise log_failure(ctx.folder, stage.name, exc) from None


class _NoComputeFailed(logging.Filter):
    """Drops the worker's "Compute Failed" report: the error is in the target's af2cpu.log already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class WorkerHygiene(WorkerPlugin):
    """Installed on every worker of a batch: keeps task errors off the console, and kills the process
    groups of the tools the worker runs when it closes or receives SIGTERM."""

    name = "af2cpu-hygiene"

    def setup(self, worker) -> None:
        logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _NoComputeFailed) for f in logger.filters):
            logger.addFilter(_NoComputeFailed())
        try:
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum, frame):
                kill_running_tools()
                if callable(previous):
                    previous(signum, frame)
                else:
                    raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: closing the worker (teardown) still kills the tools
            pass

    def teardown(self, worker) -> None:
        kill_running_tools()


class BatchGraph:
    """Submits the stages of each target and follows them to the end."""

    def __init__(self, client: Client, cfg: DictConfig, batch: BatchDir, stages: Callable[[Target], Sequence[Stage]],
                 force: bool = False, progress: ProgressCallback | None = None,
                 precomputed_msas: Path | None = None):
        self.client = client
        self.cfg = cfg
        self.batch = batch
        self.stages = stages  # a target's stages (af2cpu.scheduler.stages.target_stages)
        self.force = force
        self.progress = progress or (lambda target, stage, state: None)
        self.precomputed_msas = precomputed_msas
        self.worker_cpus = _worker_cpus(client)
        client.register_plugin(WorkerHygiene())
        self._futures: list[tuple[Future, str, str]] = []  # (future, target id, stage)
        self._batch: dict[str, Future] = {}  # stage name -> the batch search its tasks wait for
        # Stage.shares -> the first target's stage doing that work (a search of a chain several targets
        # have), which the others' stages wait for, then reuse by sequence (StageContext.batch_msas).
        self._shared: dict[str, Future] = {}
        self._batch_msas: dict[str, list[Path]] = {}

    def _resources(self, cpus: int | None) -> dict | None:
        if self.worker_cpus is None:
            return None
        wanted = self.worker_cpus if cpus is None else min(cpus, self.worker_cpus)
        return {"cpus": wanted}

    def _submit(self, target: Target, stage: Stage, ctx: StageContext, needed: list[Future]) -> Future:
        key = f"{stage.name}-{target.id}-{uuid.uuid4().hex[:8]}"
        # A search another target of the batch runs for the same sequence is waited for, then copied. If
        # that one fails, so does this one: it would search the same sequence in the same databases.
        shared = self._shared.get(stage.shares) if stage.shares is not None and not self.force else None
        after = [f for f in (self._batch.get(stage.name), shared) if f is not None]
        future = self.client.submit(
            _execute, stage, ctx, *needed, after=after, key=key, pure=False,
            retries=int(self.cfg.scheduler.retries), priority=target.num_residues,
            resources=self._resources(stage.cpus),
        )
        future.add_done_callback(lambda f, t=target.id, s=stage.name: self._report(f, t, s))
        self._futures.append((future, target.id, stage.name))
        if stage.shares is not None:
            self._shared.setdefault(stage.shares, future)
        return future

    def _report(self, future: Future, target_id: str, stage: str) -> None:
        if future.status == "finished":
            self.progress(target_id, stage, "cached" if future.result().cached else "done")
        elif future.status == "error":
            self.progress(target_id, stage, "failed")

    def _context(self, target: Target) -> StageContext:
        return StageContext(folding_target(self.cfg, target), self.cfg, self.batch.target(target.id), self.force,
                            precomputed_msas(self.precomputed_msas, target.id), batch_msas=self._batch_msas)

    def submit_batch_searches(self, targets: Sequence[Target]) -> None:
        """Submit one task per batch search (MMseqs2: all queries in one run) for `targets`, before their
        stages: each target's own search stage waits for it and reuses its result. Not with --force
        (each target searches anew) or precomputed MSAs (copied per target), nor for a single target."""
        searches = batch_searches(self.cfg)
        if self.force or not searches:
            return
        contexts = []
        for target in targets:
            if precomputed_msas(self.precomputed_msas, target.id) is not None:
                continue
            ctx = self._context(target)
            try:
                ctx.folder.claim(target.id, target.description, target.sequence, chains_json(ctx.target))
            except Exception as exc:  # noqa: BLE001 - submit_target reports it as this target's failure
                log.warning("%s: not in the batch searches: %s", target.id, exc)
                continue
            contexts.append(ctx)
        for search in searches:
            queries = [query for ctx in contexts for query in batch_queries(search, ctx)]
            if len(queries) < 2:
                continue  # one query (or none): its own stage searches it
            future = self.client.submit(
                run_batch_search, search, contexts, key=f"batch_search_{search.name}-{uuid.uuid4().hex[:8]}",
                pure=False, priority=max(t.num_residues for t in targets) + 1, resources=self._resources(None))
            for name in {name for name, _, _ in queries}:  # search_<name>, search_<name>_<chain id>
                self._batch[name] = future

    def submit_target(self, target: Target) -> Future:
        """Submit every stage of `target`; returns the future of its last stage (the final files)."""
        ctx = self._context(target)
        ctx.folder.claim(target.id, target.description, target.sequence, chains_json(ctx.target))
        futures: dict[str, Future] = {}
        stages = self.stages(target)
        for stage in stages:
            futures[stage.name] = self._submit(target, stage, ctx, [futures[name] for name in stage.needs])
        return futures[stages[-1].name]

    def run(self, targets: Sequence[Target]) -> list[TargetOutcome]:
        """Run the batch to the end; every target gets an outcome, whatever the others did."""
        finals = {}
        outcomes: dict[str, TargetOutcome] = {}
        self._batch_msas.update(batch_msa_folders(
            (folding_target(self.cfg, t), self.batch.target(t.id)) for t in targets))
        try:
            self.submit_batch_searches(targets)
        except Exception as exc:  # noqa: BLE001 - without the batch search each target searches alone
            log.warning("batch searches not submitted (%s); each target searches alone", exc)
            self._batch.clear()
        for target in sorted(targets, key=lambda t: t.num_residues, reverse=True):
            try:
                finals[self.submit_target(target)] = target
            except Exception as exc:  # noqa: BLE001 - one target's set-up error must not stop the batch
                outcomes[target.id] = TargetOutcome(target, "failed", failure=str(exc), failed_stage="setup")
        for future in as_completed(list(finals)):
            target = finals[future]
            if future.status == "finished":
                outcomes[target.id] = TargetOutcome(target, "done", summary=future.result().info)
                continue
            failed_stage, reason = self._first_failure(target)
            outcomes[target.id] = TargetOutcome(target, "failed", failure=reason, failed_stage=failed_stage)
        return [outcomes[t.id] for t in targets]

    def _first_failure(self, target: Target) -> tuple[str, str]:
        for future, target_id, stage in self._futures:
            if target_id == target.id and future.status == "error":
                return stage, f"{stage}: {future.exception()}"
        return "unknown", "a task failed without an error message"

    def cancel(self) -> None:
        """Cancel everything still pending (Ctrl-C)."""
        self.client.cancel([future for future, _, _ in self._futures] + list(self._batch.values()), force=True)
