"""Progress of a batch: a live per-target table on a terminal, plain log lines otherwise.

The table shows, per target, how many of its declared stages (``af2cpu.scheduler.stages``) are finished
and a mark per stage in the order a target passes through them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO

from typing_extensions import Self

from af2cpu.scheduler.stages import stage_sort_key

log = logging.getLogger("af2cpu.progress")

_MARK = {"running": "…", "done": "✓", "cached": "=", "failed": "✗"}


class Progress:
    """Receives (target, stage, state) events from any thread and shows them."""

    def __init__(self, stage_counts: Mapping[str, int], stream: TextIO | None = None,
                 live: bool | None = None, quiet: bool = False):
        """``stage_counts``: each target's number of declared stages (a complex has more), by target id."""
        self.stream = stream or sys.stderr
        self.live = (self.stream.isatty() if live is None else live) and not quiet
        self.quiet = quiet
        self.started = time.monotonic()
        self.targets = list(stage_counts)
        self.totals = dict(stage_counts)
        self.stages: dict[str, dict[str, str]] = {t: {} for t in self.targets}
        self.last: dict[str, str] = {t: "queued" for t in self.targets}
        self._lock = threading.Lock()
        self._lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, target_id: str, stage: str, state: str) -> None:
        with self._lock:
            self.stages.setdefault(target_id, {})[stage] = state
            self.last[target_id] = f"{stage} {state}"
        if not self.live and not self.quiet:
            elapsed = time.monotonic() - self.started
            log.info("[%6.1fs] %s: %s %s", elapsed, target_id, stage, state)

    def finish_target(self, target_id: str, status: str, detail: str = "") -> None:
        """A target ended: status 'done' or 'failed' (with the reason in `detail`)."""
        with self._lock:
            self.last[target_id] = f"{status.upper()} {detail}".strip()
        if not self.live and not self.quiet:
            log.info("%s: %s %s", target_id, status, detail)

    def _render(self) -> str:
        elapsed = time.monotonic() - self.started
        width = max([len(t) for t in self.targets] + [6])
        rows = [f"af2cpu predict — {len(self.targets)} target(s), {elapsed:7.1f} s"]
        for target in self.targets:
            stages = self.stages[target]
            finished = sum(state in ("done", "cached") for state in stages.values())
            count = f"{finished}/{self.totals[target]}" if self.totals.get(target) else str(finished)
            marks = " ".join(f"{stage}{_MARK.get(stages[stage], '?')}" for stage in sorted(stages, key=stage_sort_key))
            rows.append(f"  {target:<{width}}  {count:>5}  {self.last[target][:40]:<40}  {marks}"[:200])
        return "\n".join(rows)

    def _draw(self) -> None:
        with self._lock:
            text = self._render()
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._lines = text.count("\n") + 1

    def __enter__(self) -> Self:
        if self.live:
            def loop():
                while not self._stop.wait(0.5):
                    self._draw()

            self._thread = threading.Thread(target=loop, name="af2cpu-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw()
