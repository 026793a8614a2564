"""The stage cache: atomic outputs, stage records keyed by what produced them, per-target locks.

A stage (a search, features, one model's inference, relaxation) is done when its record exists, holds
the same key, and every output it lists is still the file it wrote: the record names each output with
its size and sha256, and a lookup checks both. An output that is missing, truncated, or changed (say a
file swapped in from another target) is reported in one log line naming the file; the record is
discarded and the stage runs again, and the stages whose keys hash that output follow. The key is the sha256 of the canonical JSON of
everything that determines the result: the stage name, the content hashes of its inputs, the subset of
the configuration it reads, the versions of the tools it runs and the identity (path, size, mtime) of
the databases it searches. Outputs and records are written to a temporary file in the same folder,
flushed to disk and renamed over the final name, so a reader sees the old file or the new one, never
a part.

Job-array shards that share an output folder take a lock per target before running its stages. A lock
file holds the holder's pid, host and a token; the holder touches it (its "heartbeat") while it runs.
A lock is stale, and is taken over, when its heartbeat is older than `stale_after` seconds or its
holder's pid no longer runs on this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from typing_extensions import Self

from af2cpu.errors import Af2CpuError
from af2cpu.io import atomic_write_bytes, canonical_json, file_hash
from af2cpu.layout import TargetDir

log = logging.getLogger(__name__)


def stage_key(
    stage: str,
    inputs: Mapping[str, str],
    config: Mapping,
    tool_versions: Mapping[str, str],
    databases: Mapping[str, list],
) -> str:
    """The cache key of a stage run: sha256 of the canonical JSON of what determines its result.

    `inputs` maps input names to content hashes (see :func:`af2cpu.io.file_hash`), `config` is the subset of the
    configuration the stage reads, `databases` identifies the database files (see
    af2cpu.preprocessing.searches.database_identity).
    """
    document = {
        "stage": stage,
        "inputs": dict(inputs),
        "config": config,
        "tools": dict(tool_versions),
        "databases": databases,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


@dataclass(frozen=True)
class StageRecord:
    """What a finished stage leaves: its key, when it ran, and its outputs (relative to the target
    folder)."""

    stage: str
    key: str
    started: float
    finished: float
    outputs: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # e.g. tool timings, for reports
    # {output: {"size": bytes, "sha256": hex}}: what each output was when the stage wrote it.
    checksums: dict = field(default_factory=dict)


def file_checksum(path: Path) -> dict:
    """What a stage record keeps of an output: its size and sha256."""
    return {"size": path.stat().st_size, "sha256": file_hash(path)}


def output_problem(path: Path, expected: dict | None) -> str | None:
    """What is wrong with an output compared with its recorded checksum, or None when it is intact."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if not path.is_file():
        return "is not a file"
    if expected is None:
        return None  # a record written before checksums were kept: existence is all it can tell
    if size != expected.get("size"):
        return f"has {size} bytes, the stage wrote {expected.get('size')} (truncated or replaced)"
    if file_hash(path) != expected.get("sha256"):
        return "changed since the stage wrote it (its sha256 differs)"
    return None


class StageCache:
    """Stage records of one target folder (`<out>/<target_id>/`)."""

    def __init__(self, folder: TargetDir | str | os.PathLike):
        self.target = folder if isinstance(folder, TargetDir) else TargetDir(folder)
        self.folder = self.target.path

    def record_path(self, stage: str) -> Path:
        return self.target.stage_record(stage)

    def lock(self, stale_after: float = 600.0, wait: float | None = None) -> TargetLock:
        """The lock that array shards take before running this target's stages."""
        return TargetLock(self.target.lock, stale_after=stale_after, wait=wait)

    def lookup(self, stage: str, key: str | None = None) -> StageRecord | None:
        """The record of `stage` if it was finished with `key` (any key if None) and its outputs are intact.

        A record whose output is missing or differs from its recorded size and sha256, and a record
        file that cannot be read, are reported in one warning line and removed: the stage runs again.
        """
        path = self.record_path(stage)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            record = StageRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            log.warning("%s: stage record %s is unreadable (%s); rerunning %s", self.target.id, path,
                        type(exc).__name__, stage)
            path.unlink(missing_ok=True)
            return None
        if (key is not None and record.key != key) or record.stage != stage:
            return None
        for output in record.outputs:
            problem = output_problem(self.folder / output, record.checksums.get(output))
            if problem is not None:
                log.warning("%s: %s %s; rerunning %s and what depends on it", self.target.id,
                            self.folder / output, problem, stage)
                path.unlink(missing_ok=True)
                return None
        return record

    def record(self, record: StageRecord) -> StageRecord:
        """Write a record atomically, after its outputs were written; the size and sha256 of each output
        go into it. Returns the record written."""
        missing = [o for o in record.outputs if not (self.folder / o).is_file()]
        if missing:
            raise Af2CpuError(
                f"stage {record.stage} of {self.folder} claims outputs that do not exist: {missing}"
            )
        checksums = {o: file_checksum(self.folder / o) for o in record.outputs}
        record = replace(record, checksums=checksums)
        atomic_write_bytes(self.record_path(record.stage), canonical_json(asdict(record)))
        return record

    def run(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], list[str]],
        info: dict | None = None,
    ) -> tuple[StageRecord, bool]:
        """Run `compute(folder)` unless `stage` is cached with `key`; returns (record, was_cached).

        `compute` writes its outputs (atomically) into the folder and returns their relative paths.
        """
        cached = self.lookup(stage, key)
        if cached is not None:
            return cached, True
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        outputs = list(compute(self.folder))
        record = StageRecord(stage, key, started, time.time(), outputs, dict(info or {}))
        return self.record(record), False


class LockTimeout(Af2CpuError):
    """A target lock could not be taken in time: another live process holds it."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TargetLock:
    """An exclusive lock on one target across processes and hosts sharing a file system.

    Use as a context manager (raises LockTimeout after `wait` seconds), or `acquire()` / `release()`. While held, a background thread touches
    the lock file every `stale_after / 4` seconds; `lost` becomes True if another process took the
    lock over (which happens only when this holder stopped refreshing it for `stale_after`).
    """

    def __init__(
        self, path: str | os.PathLike, stale_after: float = 600.0, wait: float | None = None
    ):
        self.path = Path(path)
        self.stale_after = stale_after
        self.wait = wait  # how long `with` waits for a live holder (None: as long as it takes)
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}  # a holder between creating and writing the file

    def is_stale(self, holder: dict) -> bool:
        """Whether the lock described by `holder` (the file's content) may be taken over."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if age > self.stale_after:
            return True
        return holder.get("host") == self.host and "pid" in holder and not _process_alive(holder["pid"])

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(canonical_json({"pid": os.getpid(), "host": self.host, "token": self.token,
                                         "since": time.time()}))
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _break(self, holder: dict) -> None:
        """Move a stale lock aside; put it back if it turns out to be a fresh one."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            moved = {}
        if holder and moved.get("token") != holder.get("token"):
            # Another process broke the stale lock and took a new one between our read and rename.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def acquire(self, timeout: float | None = None, poll: float = 0.2) -> bool:
        """Take the lock; wait up to `timeout` seconds (forever if None, not at all if 0)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_create():
                self._start_heartbeat()
                return True
            holder = self._holder()
            if holder is not None and self.is_stale(holder):
                self._break(holder)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self.lost = False
        self._heartbeat = threading.Thread(target=self._beat, name=f"lock {self.path.name}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            holder = self._holder()
            if not holder or holder.get("token") != self.token:
                self.lost = True
                return
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        """Release the lock if this object still holds it."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        if not self.acquire(timeout=self.wait):
            holder = self._holder() or {}
            raise LockTimeout(
                f"{self.path} is held by pid {holder.get('pid')} on {holder.get('host')}, which is alive; "
                f"another run is working on this target (a lock whose holder stops is taken over after "
                f"{self.stale_after:.0f} s)"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()
