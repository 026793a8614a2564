"""The Dask task graph of a batch: per target, searches -> features -> models -> rank -> relax -> files.

Tasks carry resources (`cpus`) so that the searches of several targets, inference and relaxation
share the workers' cores without oversubscription; longer targets get a higher priority so they start
first. A failed task is retried (`scheduler.retries`); a target whose task still fails is reported
with the reason while the others finish.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from distributed import Client, Future, as_completed
from omegaconf import DictConfig

from af2cpu import pipeline
from af2cpu.preprocessing.inputs import Target

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


class BatchGraph:
    """Submits the stages of each target and follows them to the end."""

    def __init__(self, client: Client, cfg: DictConfig, out_dir: Path, force: bool = False,
                 progress: ProgressCallback | None = None, precomputed_msas: Path | None = None,
                 require_features: bool = False):
        self.client = client
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.force = force
        self.progress = progress or (lambda target, stage, state: None)
        self.precomputed_msas = precomputed_msas
        self.require_features = require_features  # split workflows: features were made elsewhere
        self.worker_cpus = _worker_cpus(client)
        self._futures: list[tuple[Future, str, str]] = []  # (future, target id, stage)

    def _resources(self, cpus: int | None) -> dict | None:
        if self.worker_cpus is None:
            return None
        wanted = self.worker_cpus if cpus is None else min(cpus, self.worker_cpus)
        return {"cpus": wanted}

    def _submit(self, target: Target, stage: str, fn, *args, cpus: int | None = None, **kwargs) -> Future:
        key = f"{stage}-{target.id}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(
            fn, *args, key=key, pure=False, retries=int(self.cfg.scheduler.retries),
            priority=len(target.sequence), resources=self._resources(cpus), **kwargs,
        )
        future.add_done_callback(lambda f, t=target.id, s=stage: self._report(f, t, s))
        self._futures.append((future, target.id, stage))
        return future

    def _report(self, future: Future, target_id: str, stage: str) -> None:
        if future.status == "finished":
            result = future.result()
            cached = isinstance(result, pipeline.StageTiming) and result.cached
            self.progress(target_id, stage, "cached" if cached else "done")
        elif future.status == "error":
            self.progress(target_id, stage, "failed")

    def submit_target(self, target: Target) -> Future:
        """Submit every stage of `target`; returns the future of its final stage."""
        cfg, force = self.cfg, self.force
        target_dir = str(self.out_dir / target.id)
        pipeline.write_target_info(target, target_dir)
        search_cpus = int(cfg.search.cpus) or None
        precomputed = None
        if self.precomputed_msas is not None:
            for candidate in (self.precomputed_msas / target.id / "msas", self.precomputed_msas / target.id):
                if candidate.is_dir():
                    precomputed = str(candidate)
                    break

        from af2cpu.preprocessing.searches import plan_searches

        if self.require_features:
            features = self._submit(target, "features", pipeline.existing_features, target, target_dir, cpus=1)
            return self._submit_models(target, features, [])

        plan = plan_searches(cfg.db)
        searches: dict[str, Future] = {}
        for search in plan:
            if search.needs:
                continue
            searches[search.name] = self._submit(
                target, f"search_{search.name}", pipeline.search_stage, target, search.name, cfg, target_dir,
                search_cpus or 0, force, precomputed, cpus=search_cpus or 1,
            )
        for search in plan:
            if not search.needs:
                continue
            after = [searches[s.name] for s in plan if s.output in search.needs]
            searches[search.name] = self._submit(
                target, f"search_{search.name}", _after(pipeline.search_stage, len(after)), *after,
                target, search.name, cfg, target_dir, search_cpus or 0, force, precomputed, cpus=search_cpus or 1,
            )
        features = self._submit(
            target, "features", _after(pipeline.features_stage, len(searches)), *searches.values(),
            target, cfg, target_dir, force, cpus=1,
        )
        return self._submit_models(target, features, list(searches.values()))

    def _submit_models(self, target: Target, features: Future, searches: list[Future]) -> Future:
        """Inference per preset after `features`, then ranking, relaxation and the final files."""
        cfg, force = self.cfg, self.force
        target_dir = str(self.out_dir / target.id)
        infers = [
            self._submit(
                target, f"infer_{name}", _after(pipeline.infer_stage, 1), features, target, name, cfg,
                target_dir, force, cpus=None,
            )
            for name in cfg.model.names
        ]
        order = self._submit(target, "rank", _rank, cfg, target_dir, *infers, cpus=1)
        mode = str(getattr(cfg.relax.mode, "value", cfg.relax.mode))
        count = {"best": 1, "all": len(cfg.model.names), "none": 0}[mode]
        relaxes = [
            self._submit(target, f"relax_{index}", _relax_ranked, order, index, cfg, target_dir, force,
                         cpus=int(cfg.relax.threads) or 1)
            for index in range(count)
        ]
        timings = [*searches, features, *infers, *relaxes]
        return self._submit(
            target, "finalize", _finalize, target, cfg, target_dir, order, *timings, cpus=1,
        )

    def run(self, targets: Sequence[Target]) -> list[TargetOutcome]:
        """Run the batch to the end; every target gets an outcome, whatever the others did."""
        finals = {}
        outcomes: dict[str, TargetOutcome] = {}
        for target in sorted(targets, key=lambda t: len(t.sequence), reverse=True):
            try:
                finals[self.submit_target(target)] = target
            except Exception as exc:  # noqa: BLE001 - one target's set-up error must not stop the batch
                outcomes[target.id] = TargetOutcome(target, "failed", failure=str(exc), failed_stage="setup")
        for future in as_completed(list(finals)):
            target = finals[future]
            if future.status == "finished":
                outcomes[target.id] = TargetOutcome(target, "done", summary=future.result())
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
        self.client.cancel([future for future, _, _ in self._futures], force=True)


def _after(fn, count: int):
    """`fn` taking its real arguments after `count` leading dependency results, which it ignores."""

    def call(*args, **kwargs):
        return fn(*args[count:], **kwargs)

    call.__name__ = getattr(fn, "__name__", "stage")
    return call


def _rank(cfg: DictConfig, target_dir: str, *infers: pipeline.StageTiming) -> list[str]:
    return pipeline.rank_stage(cfg, target_dir, infers)


def _relax_ranked(order: list[str], index: int, cfg: DictConfig, target_dir: str, force: bool):
    return pipeline.relax_stage(order[index], cfg, target_dir, force)


def _finalize(target: Target, cfg: DictConfig, target_dir: str, order: list[str], *timings) -> dict:
    started = time.time()
    stages = [t for t in timings if isinstance(t, pipeline.StageTiming)]
    summary = pipeline.finalize_stage(target, cfg, target_dir, order, stages)
    summary["seconds"] = {t.name: round(t.end - t.start, 3) for t in stages}
    summary["finalize_seconds"] = round(time.time() - started, 3)
    return summary
