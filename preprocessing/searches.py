"""The searches of one target as independent tasks, and when an earlier result may be reused.

:func:`plan_searches` lists the searches a database preset needs (AlphaFold2's monomer data
pipeline): jackhmmer on UniRef90 and MGnify, hhblits on BFD + UniRef30 (or jackhmmer on small BFD
for the reduced preset), and the template search on PDB70 that reads the UniRef90 result. Each
:class:`Search` runs on its own (:func:`run_search`), so a scheduler can make one task per search;
:func:`target_raw_features` then builds the raw features from the result files.

Next to every result file lies ``<file>.json``: the query sequence's hash, the search's flags, the
identity (path, size, modification time) of every database file, the hashes of input results (the
template search reads UniRef90's), the tool and its version. A result is reused only when all of that still matches, so
an MSA made for another sequence or another database is never taken for this one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from af2cpu.databases import database_files
from af2cpu.preprocessing import features as raw_features
from af2cpu.preprocessing import tools
from af2cpu.preprocessing.inputs import Target, write_query_fasta
from af2cpu.preprocessing.templates import TemplateSettings
from af2cpu.scheduler.cache import file_hash

log = logging.getLogger(__name__)

PROVENANCE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Search:
    """One search: its result file name in ``msas/``, its databases, the results it reads."""

    name: str
    output: str
    databases: tuple[tuple[str, str], ...]  # (database name, configured path)
    needs: tuple[str, ...] = ()  # output files of other searches this one reads

    def run(self, query_fasta: Path, msa_dir: Path, cpus: int, timeout: float) -> tools.ToolRun:
        """Run the search; its result lands in ``msa_dir / self.output``."""
        out = msa_dir / self.output
        paths = [path for _, path in self.databases]
        if self.name == "uniref90":
            return tools.search_uniref90(query_fasta, paths[0], out, cpus, timeout)
        if self.name == "mgnify":
            return tools.search_mgnify(query_fasta, paths[0], out, cpus, timeout)
        if self.name == "small_bfd":
            return tools.search_small_bfd(query_fasta, paths[0], out, cpus, timeout)
        if self.name == "bfd_uniref":
            return tools.hhblits(query_fasta, paths, out, cpus, timeout)
        if self.name == "pdb70":
            return tools.search_pdb70(msa_dir / self.needs[0], paths[0], out, cpus, timeout)
        if self.name == "pdb_seqres":
            return tools.search_pdb_seqres(msa_dir / self.needs[0], paths[0], out, cpus, timeout)
        raise ValueError(f"unknown search {self.name!r}")


# The flags (and caps) each search runs with: part of a result's provenance, so a result made
# with other settings is not reused.
SEARCH_SETTINGS = {
    "uniref90": [*tools.JACKHMMER_FLAGS, f"max_sequences={tools.UNIREF90_MAX_HITS}"],
    "mgnify": [*tools.JACKHMMER_FLAGS, f"max_sequences={tools.MGNIFY_MAX_HITS}"],
    "small_bfd": list(tools.JACKHMMER_FLAGS),
    "bfd_uniref": list(tools.HHBLITS_FLAGS),
    "pdb70": list(tools.HHSEARCH_FLAGS),
    "pdb_seqres": ["hmmbuild --hand --amino", *tools.HMMSEARCH_FLAGS],
}


def plan_searches(db: Mapping[str, Any], template_search: str = "pdb70") -> list[Search]:
    """The searches for database config `db` (``cfg.db``), in AlphaFold2's order.

    `template_search` is "pdb70" (hhsearch, monomer) or "pdb_seqres" (hmmsearch, multimer).
    """
    preset = str(getattr(db["preset"], "value", db["preset"]))
    plan = [
        Search("uniref90", "uniref90_hits.sto", (("uniref90", str(db["uniref90"])),)),
        Search("mgnify", "mgnify_hits.sto", (("mgnify", str(db["mgnify"])),)),
    ]
    if preset == "reduced":
        plan.append(Search("small_bfd", "small_bfd_hits.sto", (("small_bfd", str(db["small_bfd"])),)))
    else:
        plan.append(
            Search(
                "bfd_uniref",
                "bfd_uniref_hits.a3m",
                (("bfd", str(db["bfd"])), ("uniref30", str(db["uniref30"]))),
            )
        )
    if template_search == "pdb70":
        plan.append(Search("pdb70", "pdb_hits.hhr", (("pdb70", str(db["pdb70"])),), ("uniref90_hits.sto",)))
    elif template_search == "pdb_seqres":
        plan.append(
            Search(
                "pdb_seqres", "pdb_hits.sto", (("pdb_seqres", str(db["pdb_seqres"])),), ("uniref90_hits.sto",)
            )
        )
    else:
        raise ValueError(f"template_search must be 'pdb70' or 'pdb_seqres', not {template_search!r}")
    return plan


def template_settings(cfg: Mapping[str, Any], kalign_binary: str | None = None) -> TemplateSettings:
    """Template settings from the whole configuration (``cfg.db`` paths, ``cfg.max_template_date``)."""
    obsolete = str(cfg["db"]["obsolete_pdbs"])
    return TemplateSettings(
        mmcif_dir=str(cfg["db"]["template_mmcif_dir"]),
        max_template_date=str(cfg["max_template_date"]),
        obsolete_pdbs_path=obsolete if os.path.isfile(obsolete) else None,
        kalign_binary=kalign_binary,
    )


# ---------------------------------------------------------------------------------------------
# Provenance and reuse


def sequence_sha256(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()


def database_identity(search: Search) -> list[dict[str, Any]]:
    """Path, size and modification time of every file of the search's databases."""
    identity = []
    for name, path in search.databases:
        for file in database_files(name, path):
            try:
                stat = file.stat()
            except OSError:
                identity.append({"path": str(file), "missing": True})
                continue
            identity.append({"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return identity


def provenance_key(search: Search, sequence: str, msa_dir: Path) -> dict[str, Any]:
    """What a result of `search` depends on: sequence, databases and the input results it reads."""
    inputs = {}
    for needed in search.needs:
        path = msa_dir / needed
        inputs[needed] = file_hash(path) if path.is_file() else None
    return {
        "version": PROVENANCE_VERSION,
        "search": search.name,
        "settings": SEARCH_SETTINGS[search.name],
        "sequence_sha256": sequence_sha256(sequence),
        "databases": database_identity(search),
        "inputs": inputs,
    }


def _sidecar(result: Path) -> Path:
    return result.with_name(result.name + ".json")


def reusable(search: Search, sequence: str, msa_dir: Path) -> bool:
    """True if ``msa_dir`` holds a result of `search` made for this sequence and these databases."""
    result = msa_dir / search.output
    sidecar = _sidecar(result)
    if not result.is_file() or not sidecar.is_file():
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("key") == provenance_key(search, sequence, msa_dir)


def _record(search: Search, sequence: str, msa_dir: Path, run: tools.ToolRun) -> None:
    sidecar = _sidecar(msa_dir / search.output)
    payload = {
        "key": provenance_key(search, sequence, msa_dir),
        "tool": run.tool,
        "tool_version": run.version,
        "seconds": round(run.seconds, 3),
    }
    staged = sidecar.with_name("." + sidecar.name + ".partial")
    staged.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(staged, sidecar)


def adopt_precomputed(search: Search, sequence: str, source_dir: Path, msa_dir: Path) -> bool:
    """Copy a precomputed result (with its JSON) from `source_dir` if it is valid for this target."""
    if source_dir.resolve() == msa_dir.resolve() or not reusable(search, sequence, source_dir):
        return False
    msa_dir.mkdir(parents=True, exist_ok=True)
    for name in (search.output, search.output + ".json"):
        staged = msa_dir / f".{name}.partial"
        shutil.copyfile(source_dir / name, staged)
        os.replace(staged, msa_dir / name)
    return reusable(search, sequence, msa_dir)


def run_search(
    search: Search,
    target: Target,
    msa_dir: str | Path,
    cpus: int,
    timeout: float = tools.DEFAULT_TIMEOUT_S,
    reuse: bool = True,
    precomputed_dir: str | Path | None = None,
) -> Path:
    """Make ``msa_dir / search.output`` for `target` (one scheduler task); returns its path.

    Reuses a result already in `msa_dir`, or copies one from `precomputed_dir`, when its JSON says
    it was made for this sequence and these databases; otherwise runs the tool.
    """
    msa_dir = Path(msa_dir)
    msa_dir.mkdir(parents=True, exist_ok=True)
    result = msa_dir / search.output
    if reuse and reusable(search, target.sequence, msa_dir):
        log.info("%s: reusing %s", target.id, result)
        return result
    if precomputed_dir is not None and adopt_precomputed(
        search, target.sequence, Path(precomputed_dir), msa_dir
    ):
        log.info("%s: using precomputed %s from %s", target.id, search.output, precomputed_dir)
        return result
    query = msa_dir / f".query_{search.name}.fasta"
    write_query_fasta(target, query)
    try:
        run = search.run(query, msa_dir, cpus, timeout)
    finally:
        query.unlink(missing_ok=True)
    _record(search, target.sequence, msa_dir, run)
    log.info("%s: %s done in %.1f s (%s %s)", target.id, search.name, run.seconds, run.tool, run.version)
    return result


def msa_files(plan: Sequence[Search], msa_dir: str | Path) -> raw_features.MsaFiles:
    """The result files of `plan` in `msa_dir`, as the raw-feature builder takes them."""
    msa_dir = Path(msa_dir)
    by_name = {s.name: msa_dir / s.output for s in plan}
    return raw_features.MsaFiles(
        uniref90_sto=by_name.get("uniref90"),
        mgnify_sto=by_name.get("mgnify"),
        bfd_a3m=by_name.get("bfd_uniref"),
        small_bfd_sto=by_name.get("small_bfd"),
        pdb_hits_hhr=by_name.get("pdb70"),
        pdb_hits_sto=by_name.get("pdb_seqres"),
    )


def target_raw_features(
    target: Target,
    plan: Sequence[Search],
    msa_dir: str | Path,
    settings: TemplateSettings | None,
) -> raw_features.RawFeaturesResult:
    """Raw features of `target` from the finished searches of `plan` (the last task per target)."""
    return raw_features.raw_features_from_files(
        target.sequence, target.description, msa_files(plan, msa_dir), settings
    )
