"""The output folder: every file name af2cpu writes, owned here and nowhere else.

``<out>/`` (a :class:`BatchDir`) holds one folder per target (a :class:`TargetDir`), the batch summary
(``summary.json``, ``summary.tsv``), ``af2cpu report``'s ``report.csv``/``report.json``, the job-array
script and its ``logs/``, and a marker file saying the folder is af2cpu's. A target folder holds what
AlphaFold2 writes (``msas/``, ``features.npz``, ``result_<model>.npz``, ``ranked_<i>.pdb`` ...), plus
``target.json`` (the id, original FASTA header and sequence), ``timings.json``, ``plots/``, one
``<stage>.stage.json`` record per finished stage, ``af2cpu.log`` (the full error of each failed stage)
and the lock that job-array shards take. Code asks
these classes for a path; no other module spells a file name of the output folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from af2cpu.errors import Af2CpuError, InputError
from af2cpu.io import atomic_write_text

STAGE_RECORD_SUFFIX = ".stage.json"
_RESULT_NPZ = re.compile(r"^result_(?P<model>.+)\.npz$")
_RESULT_PKL = re.compile(r"^result_.+\.pkl$")
_STRUCTURE_PDB = re.compile(r"^(?P<stem>(?:ranked_\d+|unrelaxed_.+|relaxed_.+))\.pdb$")
# Files any one of which makes a folder a target folder of af2cpu (or of AlphaFold2).
_TARGET_MARKERS = ("features.npz", "ranking_debug.json", "timings.json", "msas")


class TargetDir:
    """The files of one target's folder, ``<out>/<target id>/``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"TargetDir('{self.path}')"

    @property
    def id(self) -> str:
        return self.path.name

    def relative(self, path: Path) -> str:
        """``path`` relative to the folder, as stage records list their outputs."""
        return Path(path).relative_to(self.path).as_posix()

    # --- inputs and intermediates ------------------------------------------------------------

    @property
    def target_json(self) -> Path:
        return self.path / "target.json"

    @property
    def msas(self) -> Path:
        """The search results (``msas/<search output>``)."""
        return self.path / "msas"

    @property
    def features(self) -> Path:
        return self.path / "features.npz"

    @property
    def features_pkl(self) -> Path:
        return self.path / "features.pkl"

    @property
    def features_report(self) -> Path:
        return self.path / "features_report.json"

    # --- per model -----------------------------------------------------------------------------

    def result(self, model: str) -> Path:
        return self.path / f"result_{model}.npz"

    def confidence(self, model: str) -> Path:
        return self.path / f"confidence_{model}.json"

    def pae(self, model: str) -> Path:
        return self.path / f"pae_{model}.json"

    def unrelaxed(self, model: str) -> Path:
        return self.path / f"unrelaxed_{model}.pdb"

    def relaxed(self, model: str) -> Path:
        return self.path / f"relaxed_{model}.pdb"

    def relax_report(self, model: str) -> Path:
        return self.path / f"relax_report_{model}.json"

    def best_structure(self, model: str) -> Path:
        """The relaxed structure of ``model`` where there is one, else the unrelaxed one."""
        relaxed = self.relaxed(model)
        return relaxed if relaxed.is_file() else self.unrelaxed(model)

    def result_files(self) -> dict[str, Path]:
        """``{model: result_<model>.npz}`` of every model that has one."""
        if not self.path.is_dir():
            return {}
        return {m.group("model"): p for p in self.path.iterdir() if (m := _RESULT_NPZ.match(p.name))}

    def structure_files(self) -> dict[str, Path]:
        """``{stem: path}`` of every PDB of the folder (``ranked_<i>``, ``unrelaxed_<model>``, ``relaxed_<model>``)."""
        return {m.group("stem"): p for p in self.path.glob("*.pdb") if (m := _STRUCTURE_PDB.match(p.name))}

    def has_pickled_results(self) -> bool:
        """True for an AlphaFold2 folder whose results are ``result_<model>.pkl`` pickles."""
        return any(_RESULT_PKL.match(p.name) for p in self.path.iterdir())

    def looks_like_target(self) -> bool:
        """True if the folder holds any file that a target folder of af2cpu (or AlphaFold2) has."""
        names = {p.name for p in self.path.iterdir()}
        return bool(self.result_files()) or any(name in names for name in _TARGET_MARKERS)

    # --- ranking and final files ----------------------------------------------------------------

    @property
    def ranking_debug(self) -> Path:
        return self.path / "ranking_debug.json"

    def ranked(self, index: int) -> tuple[Path, Path]:
        """``(ranked_<index>.pdb, ranked_<index>.cif)``; index 0 is the best model."""
        return self.path / f"ranked_{index}.pdb", self.path / f"ranked_{index}.cif"

    @property
    def timings(self) -> Path:
        return self.path / "timings.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def plddt_plot(self) -> Path:
        return self.plots / "plddt.png"

    @property
    def pae_plot(self) -> Path:
        return self.plots / "pae.png"

    @property
    def msa_coverage_plot(self) -> Path:
        return self.plots / "msa_coverage.png"

    def is_finished(self) -> bool:
        """True once the last stage wrote the final files (ranking, best structure, timings)."""
        return all(p.is_file() for p in (self.ranking_debug, self.ranked(0)[0], self.timings))

    # --- bookkeeping ------------------------------------------------------------------------------

    def stage_record(self, stage: str) -> Path:
        """Where the record of a finished ``stage`` is kept."""
        return self.path / f"{stage}{STAGE_RECORD_SUFFIX}"

    def stage_records(self) -> list[Path]:
        return sorted(self.path.glob("*" + STAGE_RECORD_SUFFIX))

    @staticmethod
    def stage_of_record(path: Path) -> str:
        """The stage name a record file is named after."""
        return path.name[: -len(STAGE_RECORD_SUFFIX)]

    @property
    def log(self) -> Path:
        """``af2cpu.log``: the full error (traceback included) of every failed stage attempt."""
        return self.path / "af2cpu.log"

    @property
    def lock(self) -> Path:
        """The lock job-array shards take before working on this target."""
        return self.path / ".af2cpu.lock"

    def read_info(self) -> dict | None:
        """``target.json`` (id, description, sequence), or None when absent or unreadable."""
        try:
            return json.loads(self.target_json.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def claim(self, target_id: str, description: str, sequence: str, chains: list[dict] | None = None) -> None:
        """Create the folder and write ``target.json``; refuse a folder holding another sequence's results.

        A complex's ``target.json`` also lists its `chains` (id, original header, sequence)."""
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.read_info() if self.target_json.is_file() else None
        if existing is not None and existing.get("sequence") != sequence:
            raise Af2CpuError(
                f"{self.path} holds results of another sequence for id {target_id!r} (from "
                f"{existing.get('description')!r}); use another --out folder or rename the record"
            )
        payload = {"id": target_id, "description": description, "sequence": sequence,
                   **({"chains": chains} if chains else {})}
        atomic_write_text(self.target_json, json.dumps(payload, indent=2) + "\n")


class BatchDir:
    """The ``--out`` folder of a batch: one :class:`TargetDir` per target and the batch-level files."""

    MARKER = ".af2cpu-output"  # marks a folder as af2cpu's, so a foreign folder is never written into
    SUMMARY_LOCK = ".summary.lock"  # held while summary.json/.tsv are merged (job-array tasks share them)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def target(self, target_id: str) -> TargetDir:
        return TargetDir(self.path / target_id)

    @property
    def marker(self) -> Path:
        return self.path / self.MARKER

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def summary_tsv(self) -> Path:
        return self.path / "summary.tsv"

    @property
    def summary_lock(self) -> Path:
        return self.path / self.SUMMARY_LOCK

    @property
    def report_csv(self) -> Path:
        return self.path / "report.csv"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def logs(self) -> Path:
        """Job logs (the array script's ``--output``/``--error`` files)."""
        return self.path / "logs"

    @property
    def array_script(self) -> Path:
        """The sbatch script `af2cpu slurm script` writes by default."""
        return self.path / "af2cpu_array.sbatch"

    @classmethod
    def reserved_names(cls) -> frozenset[str]:
        """The names of the batch-level files and folders, which no target folder may take."""
        batch = cls(".")
        paths = (batch.marker, batch.summary_lock, batch.summary_json, batch.summary_tsv, batch.report_csv,
                 batch.report_json, batch.logs, batch.array_script)
        return frozenset(p.name for p in paths)

    def is_af2cpu(self) -> bool:
        return self.marker.exists()

    def target_ids(self) -> set[str]:
        """Ids of the target folders (those with a ``target.json``)."""
        if not self.path.is_dir():
            return set()
        return {p.name for p in self.path.iterdir() if TargetDir(p).target_json.is_file()}

    def prepare(self) -> None:
        """Create or reuse the folder; refuse a path that is a file, unwritable, or holds foreign content."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} exists and is not a folder; choose another --out")
        if out.is_dir() and not self.marker.exists() and any(out.iterdir()):
            raise InputError(
                f"--out {out} is not empty and was not made by af2cpu; choose an empty or new folder "
                f"(or `touch {self.marker}` to let af2cpu write into it)"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
        except OSError as exc:
            raise InputError(f"cannot write to --out {out}: {exc.strerror}; choose a writable folder") from None
        if not os.access(out, os.W_OK):
            raise InputError(f"cannot write to --out {out}; choose a writable folder")


def precomputed_msas(root: str | os.PathLike | None, target_id: str) -> Path | None:
    """The search results of ``target_id`` in an earlier run's folder: ``<root>/<id>/msas/`` (an af2cpu or
    AlphaFold2 output folder), or ``<root>/<id>/`` itself; None when there are none."""
    if root is None:
        return None
    folder = Path(root) / target_id
    for candidate in (TargetDir(folder).msas, folder):
        if candidate.is_dir():
            return candidate
    return None
