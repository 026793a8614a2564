"""How each target of a batch stands: one :class:`TargetSummary` per target.

The same record is a line of the batch summary that `af2cpu predict` writes at the top of ``--out``
(``summary.json``, ``summary.tsv``) and a row of `af2cpu report` (which adds the stage times it reads
from the target folders). Job-array tasks share the summary: :func:`merge_batch_summary` reads, merges
and writes it under a file lock, so tasks finishing together keep each other's lines, and rebuilds a
summary that cannot be read (say, cut off by a full disk) from the target folders, with a warning.
A FASTA record that was skipped as invalid is listed with status ``skipped`` and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from af2cpu.errors import InputError
from af2cpu.io import atomic_write_text
from af2cpu.layout import BatchDir

log = logging.getLogger(__name__)

SUMMARY_STATUSES = ("done", "failed", "pending", "skipped")


@dataclasses.dataclass(frozen=True)
class TargetSummary:
    """How a target ended (or stands) and, when done, its best model; ``stage_seconds`` when reported."""

    target_id: str
    status: str
    length: int | None = None
    best_model: str | None = None
    mean_plddt: float | None = None
    ptm: float | None = None
    iptm: float | None = None
    failure_reason: str | None = None
    untrained_params: bool = False
    # {stage: seconds} of the finished stages (af2cpu report); not part of the batch summary files.
    stage_seconds: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.status not in SUMMARY_STATUSES:
            raise ValueError(f"target status must be one of {SUMMARY_STATUSES}, got {self.status!r}")
        if self.status in ("failed", "skipped") and not self.failure_reason:
            raise ValueError(f"target {self.target_id!r} {self.status}: a failure_reason is required")

    @property
    def total_seconds(self) -> float:
        return round(sum(self.stage_seconds.values()), 3)


# The columns of summary.json and summary.tsv.
SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(TargetSummary) if f.name != "stage_seconds")


def status_counts(targets: Sequence[TargetSummary]) -> dict[str, int]:
    """``{status: number of targets}`` for every status."""
    return {status: sum(t.status == status for t in targets) for status in SUMMARY_STATUSES}


def _tsv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    # One record per line, no tab inside a cell: whitespace runs of a failure reason become one space
    # (summary.json keeps the reason as it was).
    return " ".join(str(value).split())


def write_batch_summary(batch: BatchDir, targets: Sequence[TargetSummary]) -> None:
    """Write ``summary.json`` and ``summary.tsv`` at the top of ``--out``, atomically.

    ``summary.json`` is ``{"counts": {status: n}, "targets": [{field: value}]}``; the TSV has the
    same fields as columns, one target per row, empty cells for absent values.
    """
    payload = {"counts": status_counts(targets),
               "targets": [{name: getattr(t, name) for name in SUMMARY_FIELDS} for t in targets]}
    atomic_write_text(batch.summary_json, json.dumps(payload, indent=2) + "\n")
    rows = [SUMMARY_FIELDS] + [[_tsv_cell(getattr(t, name)) for name in SUMMARY_FIELDS] for t in targets]
    atomic_write_text(batch.summary_tsv, "".join("\t".join(row) + "\n" for row in rows))


def read_batch_summary(batch: BatchDir) -> list[TargetSummary]:
    """The targets of ``summary.json``; an InputError naming the file when it cannot be read."""
    try:
        payload = json.loads(batch.summary_json.read_text(encoding="utf-8"))
        return [TargetSummary(**entry) for entry in payload["targets"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{batch.summary_json} is damaged ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def summary_lock(batch: BatchDir) -> Iterator[None]:
    """Hold the batch's summary lock (an flock, released by the kernel if its holder dies)."""
    with open(batch.summary_lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def merge_batch_summary(batch: BatchDir, updates: Sequence[TargetSummary],
                        rebuild: Callable[[], Sequence[TargetSummary]]) -> list[TargetSummary]:
    """Merge ``updates`` into the batch summary under its lock; returns the targets written.

    A summary that cannot be read is rebuilt with ``rebuild()`` (the targets as their folders tell),
    with a warning, and the updates are merged into that.
    """
    with summary_lock(batch):
        existing: Sequence[TargetSummary] = []
        if batch.summary_json.is_file():
            try:
                existing = read_batch_summary(batch)
            except InputError as exc:
                log.warning("%s; rebuilding it from the target folders", exc)
                existing = rebuild()
        by_id = {s.target_id: s for s in existing}
        by_id.update({s.target_id: s for s in updates})
        targets = list(by_id.values())
        write_batch_summary(batch, targets)
    return targets
