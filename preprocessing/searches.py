"""The search registry: each MSA or template search is one :class:`Search` entry, declared here once.

An entry says which tools it runs and with which flags, which databases of the catalogue
(``af2cpu.databases``) it reads, the result file it writes into ``msas/``, the results of other searches
it reads, the database presets and pipelines it belongs to, and how the raw features use its result
(as an MSA merged at a given place, or as template hits). Everything else is derived from the entries:
the searches a run makes (:func:`plan_searches`, one scheduler task each), the tools and databases it
needs (`af2cpu doctor`, `af2cpu db check`: :func:`required_tools`, :func:`required_databases`), each
result's provenance and cache key, and the MSA files the raw features read. A new search is one
:func:`register_search` call.

The entries are AlphaFold2's monomer data pipeline: jackhmmer on UniRef90 and MGnify, hhblits on BFD +
UniRef30 (or jackhmmer on small BFD for the reduced preset), and the template search on PDB70 that
reads the UniRef90 result; the multimer template search (hmmsearch on pdb_seqres) is registered for
the multimer pipeline, with jackhmmer on UniProt for the pairing of a complex's MSAs (AlphaFold-Multimer
searches each distinct chain of a complex with the multimer plan). ``search=mmseqs2`` (protocol MMSEQS2)
replaces them with ColabFold's MMseqs2 search (``af2cpu.preprocessing.mmseqs``: one A3M from UniRef30 and
the environmental database) and hhsearch on PDB70 with that A3M, as ColabFold finds templates; a
complex's chains get the same two searches and MMseqs2 on UniProt for the rows to pair. A search with a ``run_batch`` makes the
results of many targets in one tool run (:func:`run_batch_search`); each target's result is then
reused by its own search task, which finds it valid by its provenance.

Next to every result file lies ``<file>.json``: the query sequence's hash, the search's flags, the
versions of its tools, the identity (path, size, modification time) of every database file, and the
hashes of the input results it read, and the result's own size and sha256. A result is reused only when
all of that still matches, so an MSA made for another sequence, another database or another tool
version, or one truncated or replaced since it was written, is never taken for this one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from af2cpu.databases import database_files
from af2cpu.errors import ConfigError
from af2cpu.io import atomic_write_text, canonical_json, file_hash
from af2cpu.preprocessing import mmseqs, tools
from af2cpu.preprocessing.binaries import binary_version
from af2cpu.preprocessing.inputs import Target, read_query_sequence, write_query_fasta
from af2cpu.preprocessing.templates import TemplateSettings

log = logging.getLogger(__name__)

# Version 2: tool versions are part of a result's provenance.
PROVENANCE_VERSION = 2
MONOMER, MULTIMER = "monomer", "multimer"
BOTH = (MONOMER, MULTIMER)  # the monomer MSAs are also each chain's MSAs in a complex
ALPHAFOLD2, MMSEQS2 = "alphafold2", "mmseqs2"  # search protocols (config `search.protocol`)


@dataclasses.dataclass(frozen=True)
class SearchJob:
    """What one run of a search gets: the query, the results it reads, its databases, its result path."""

    query: Path  # one-record FASTA of the target
    inputs: dict[str, Path]  # result files of the searches it needs, by search name
    databases: list[str]  # paths of its databases, in the order of Search.databases
    out: Path
    cpus: int
    timeout: float


@dataclasses.dataclass(frozen=True)
class MsaUse:
    """How the raw features use a search's result as an MSA."""

    order: int  # its place among the merged MSAs (AlphaFold2's: UniRef90, BFD, MGnify)
    label: str  # its name in the features report's MSA sizes
    max_sequences: int | None = None  # AlphaFold2's cap on the rows it keeps (also applied to the search)


@dataclasses.dataclass(frozen=True)
class Search:
    """One search: its tools and flags, databases, result file, inputs, and use in the features."""

    name: str  # the stage is ``search_<name>``
    output: str  # result file name in msas/
    tools: tuple[str, ...]  # binaries it runs (their versions belong to its provenance)
    databases: tuple[str, ...]  # catalogue names of the databases it searches
    run: Callable[[Search, SearchJob], tools.ToolRun]
    flags: tuple[str, ...]  # the tool flags it runs with (part of its provenance)
    needs: tuple[str, ...] = ()  # searches whose result it reads
    db_presets: tuple[str, ...] | None = None  # database presets it runs with; None: every preset
    pipelines: tuple[str, ...] = (MONOMER,)
    msa: MsaUse | None = None  # read as an MSA of the raw features
    template_hits: str | None = None  # read as template hits: "hhr" (hhsearch) or "sto" (hmmsearch)
    pairing: bool = False  # read as the MSA a complex pairs rows from (``af2cpu.preprocessing.multimer``)
    # What turning its template hits into features needs besides its own tools and databases.
    featurize_tools: tuple[str, ...] = ()
    featurize_databases: tuple[str, ...] = ()
    protocol: str = ALPHAFOLD2  # the search protocol it belongs to
    # Makes the results of many targets in one run: (search, sequences, databases, outs, cpus, timeout) -> seconds.
    run_batch: Callable[[Search, list[str], list[str], list[Path], int, float], float] | None = None

    @property
    def settings(self) -> list[str]:
        """The flags and caps a result was made with, as recorded in its provenance."""
        cap = self.msa.max_sequences if self.msa else None
        return [*self.flags, *([f"max_sequences={cap}"] if cap is not None else [])]

    def applies(self, db_preset: str, pipeline: str, protocol: str = ALPHAFOLD2) -> bool:
        """Whether a run with this database preset, pipeline and search protocol makes this search."""
        return (protocol == self.protocol and pipeline in self.pipelines
                and (self.db_presets is None or db_preset in self.db_presets))


def _jackhmmer(search: Search, job: SearchJob) -> tools.ToolRun:
    cap = search.msa.max_sequences if search.msa else None
    return tools.jackhmmer(job.query, job.databases[0], job.out, job.cpus, job.timeout, max_sequences=cap)


def _hhblits(search: Search, job: SearchJob) -> tools.ToolRun:
    return tools.hhblits(job.query, job.databases, job.out, job.cpus, job.timeout)


def _hhsearch_pdb70(search: Search, job: SearchJob) -> tools.ToolRun:
    return tools.search_pdb70(job.inputs[search.needs[0]], job.databases[0], job.out, job.cpus, job.timeout)


def _hmmsearch_pdb_seqres(search: Search, job: SearchJob) -> tools.ToolRun:
    return tools.search_pdb_seqres(job.inputs[search.needs[0]], job.databases[0], job.out, job.cpus, job.timeout)


def _mmseqs2_batch(search: Search, sequences: list[str], databases: list[str], outs: list[Path], cpus: int,
                   timeout: float) -> float:
    return mmseqs.search_msas(sequences, databases[0], databases[1], outs, cpus, timeout)


def _mmseqs2_uniprot_batch(search: Search, sequences: list[str], databases: list[str], outs: list[Path], cpus: int,
                           timeout: float) -> float:
    return mmseqs.search_pairing_msas(sequences, databases[0], outs, cpus, timeout)


def _batch_of_one(search: Search, job: SearchJob) -> tools.ToolRun:
    """A batch search (``search.run_batch``) run for one target."""
    if search.run_batch is None:
        raise ValueError(f"search {search.name!r} has no batch mode")
    seconds = search.run_batch(search, [read_query_sequence(job.query)], job.databases, [job.out], job.cpus,
                               job.timeout)
    return tools.ToolRun(job.out, search.tools[0], binary_version(search.tools[0]), seconds)


def _hhsearch_a3m(search: Search, job: SearchJob) -> tools.ToolRun:
    return tools.hhsearch(job.inputs[search.needs[0]], job.databases, job.out, job.cpus, job.timeout)


_TEMPLATE_FEATURES = {"featurize_tools": ("kalign",), "featurize_databases": ("template_mmcif_dir", "obsolete_pdbs")}

SEARCHES: dict[str, Search] = {}


def register_search(search: Search) -> Search:
    """Add ``search`` to the registry (after the others: plans keep registration order)."""
    if search.name in SEARCHES:
        raise ValueError(f"a search named {search.name!r} is registered already")
    unknown = [name for name in search.needs if name not in SEARCHES]
    if unknown:
        raise ValueError(f"search {search.name!r} needs unregistered searches: {', '.join(unknown)}")
    SEARCHES[search.name] = search
    return search


def unregister_search(name: str) -> None:
    """Remove a registered search (plugins and tests that registered one)."""
    del SEARCHES[name]


for _search in (
    Search("uniref90", "uniref90_hits.sto", ("jackhmmer",), ("uniref90",), _jackhmmer, tuple(tools.JACKHMMER_FLAGS),
           msa=MsaUse(0, "uniref90", max_sequences=10_000), pipelines=BOTH),
    Search("mgnify", "mgnify_hits.sto", ("jackhmmer",), ("mgnify",), _jackhmmer, tuple(tools.JACKHMMER_FLAGS),
           msa=MsaUse(2, "mgnify", max_sequences=501), pipelines=BOTH),
    Search("bfd_uniref", "bfd_uniref_hits.a3m", ("hhblits",), ("bfd", "uniref30"), _hhblits,
           tuple(tools.HHBLITS_FLAGS), db_presets=("full", "mini"), msa=MsaUse(1, "bfd"), pipelines=BOTH),
    Search("small_bfd", "small_bfd_hits.sto", ("jackhmmer",), ("small_bfd",), _jackhmmer,
           tuple(tools.JACKHMMER_FLAGS), db_presets=("reduced",), msa=MsaUse(1, "small_bfd"), pipelines=BOTH),
    Search("pdb70", "pdb_hits.hhr", ("hhsearch",), ("pdb70",), _hhsearch_pdb70, tuple(tools.HHSEARCH_FLAGS),
           needs=("uniref90",), template_hits="hhr", **_TEMPLATE_FEATURES),
    Search("pdb_seqres", "pdb_hits.sto", ("hmmbuild", "hmmsearch"), ("pdb_seqres",), _hmmsearch_pdb_seqres,
           ("hmmbuild --hand --amino", *tools.HMMSEARCH_FLAGS), needs=("uniref90",), pipelines=(MULTIMER,),
           template_hits="sto", **_TEMPLATE_FEATURES),
    # AlphaFold-Multimer's UniProt MSA, from which a complex's chains pair rows by species.
    Search("uniprot", "uniprot_hits.sto", ("jackhmmer",), ("uniprot",), _jackhmmer, tuple(tools.JACKHMMER_FLAGS),
           pipelines=(MULTIMER,), pairing=True),
    # ColabFold's protocol; a complex's chains get the same MSA and templates as a monomer, and their
    # rows to pair from MMseqs2 on UniProt (paired by species as AlphaFold-Multimer pairs).
    Search("mmseqs2", "colabfold_mmseqs2.a3m", ("mmseqs",), ("colabfold_uniref30", "colabfold_envdb"), _batch_of_one,
           mmseqs.FLAGS, protocol=MMSEQS2, msa=MsaUse(0, "colabfold"), run_batch=_mmseqs2_batch, pipelines=BOTH),
    Search("mmseqs2_pdb70", "colabfold_pdb_hits.hhr", ("hhsearch",), ("pdb70",), _hhsearch_a3m,
           tuple(tools.HHSEARCH_FLAGS), needs=("mmseqs2",), protocol=MMSEQS2, template_hits="hhr", pipelines=BOTH,
           **_TEMPLATE_FEATURES),
    Search("mmseqs2_uniprot", "mmseqs2_uniprot_hits.a3m", ("mmseqs",), ("uniprot_mmseqs",), _batch_of_one,
           mmseqs.PAIRING_FLAGS, protocol=MMSEQS2, pipelines=(MULTIMER,), pairing=True,
           run_batch=_mmseqs2_uniprot_batch),
):
    register_search(_search)


def plan_searches(db_preset: str, pipeline: str = MONOMER, protocol: str = ALPHAFOLD2) -> list[Search]:
    """The searches a run with database preset ``db_preset`` (``cfg.db.preset``) and search protocol
    ``protocol`` (``cfg.search.protocol``) makes, in registry order (a search comes after those it needs)."""
    if str(db_preset) == "colabfold" and str(protocol) != MMSEQS2:
        raise ConfigError("db=colabfold holds ColabFold's MMseqs2 databases: use it with search=mmseqs2")
    return [s for s in SEARCHES.values() if s.applies(str(db_preset), pipeline, str(protocol))]


def required_tools(db_preset: str, pipeline: str = MONOMER, protocol: str = ALPHAFOLD2) -> set[str]:
    """The binaries a run needs: those of its searches and of featurizing their results."""
    return {tool for s in plan_searches(db_preset, pipeline, protocol) for tool in (*s.tools, *s.featurize_tools)}


def required_databases(db_preset: str, pipeline: str = MONOMER, protocol: str = ALPHAFOLD2) -> set[str]:
    """The catalogued databases a run needs: those its searches read and their featurization reads."""
    return {db for s in plan_searches(db_preset, pipeline, protocol)
            for db in (*s.databases, *s.featurize_databases)}


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


def database_paths(search: Search, db: Mapping[str, Any]) -> list[str]:
    """The configured paths of the search's databases (``db`` is the ``db`` config section)."""
    return [str(db[name]) for name in search.databases]


def database_identity(search: Search, db: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Path, size and modification time of every file of the search's databases."""
    identity = []
    for name, path in zip(search.databases, database_paths(search, db)):
        for file in database_files(name, path):
            try:
                stat = file.stat()
            except OSError:
                identity.append({"path": str(file), "missing": True})
                continue
            identity.append({"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return identity


def provenance_key(search: Search, sequence: str, msa_dir: Path, db: Mapping[str, Any]) -> dict[str, Any]:
    """What a result of `search` depends on: sequence, flags, tool versions, databases, input results."""
    inputs = {}
    for needed in search.needs:
        path = msa_dir / SEARCHES[needed].output
        inputs[path.name] = file_hash(path) if path.is_file() else None
    return {
        "version": PROVENANCE_VERSION,
        "search": search.name,
        "settings": search.settings,
        "tools": {tool: binary_version(tool) for tool in search.tools},
        "sequence_sha256": sequence_sha256(sequence),
        "databases": database_identity(search, db),
        "inputs": inputs,
    }


def search_key(search: Search, sequence: str, msa_dir: Path, db: Mapping[str, Any]) -> str:
    """The cache key of a search's stage: the hash of its provenance."""
    return hashlib.sha256(canonical_json(provenance_key(search, sequence, msa_dir, db))).hexdigest()


def sidecar(result: Path) -> Path:
    """The provenance file next to a search result."""
    return result.with_name(result.name + ".json")


def reusable(search: Search, sequence: str, msa_dir: Path, db: Mapping[str, Any]) -> bool:
    """True if ``msa_dir`` holds a result of `search` made for this sequence, these databases and tools."""
    result = msa_dir / search.output
    if not result.is_file() or not sidecar(result).is_file():
        return False
    try:
        recorded = json.loads(sidecar(result).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("key") != provenance_key(search, sequence, msa_dir, db):
        return False
    if "sha256" in recorded and (result.stat().st_size != recorded.get("size")
                                 or file_hash(result) != recorded["sha256"]):  # absent: an older sidecar
        log.info("%s is not the file its search wrote (size or sha256 differ from %s); searching again",
                    result, sidecar(result).name)
        return False
    return True


def _record(search: Search, sequence: str, msa_dir: Path, db: Mapping[str, Any], run: tools.ToolRun,
            batch_size: int = 1) -> None:
    result = msa_dir / search.output
    payload = {
        "key": provenance_key(search, sequence, msa_dir, db),
        "size": result.stat().st_size,
        "sha256": file_hash(result),
        "tool": run.tool,
        "tool_version": run.version,
        "seconds": round(run.seconds, 3),
        **({"batch_size": batch_size} if batch_size > 1 else {}),  # the seconds are those of the whole batch
    }
    atomic_write_text(sidecar(msa_dir / search.output), json.dumps(payload, indent=2) + "\n")


def adopt_precomputed(search: Search, sequence: str, source_dir: Path, msa_dir: Path, db: Mapping[str, Any]) -> bool:
    """Copy a precomputed result (with its JSON) from `source_dir` if it is valid for this target."""
    if source_dir.resolve() == msa_dir.resolve() or not reusable(search, sequence, source_dir, db):
        return False
    msa_dir.mkdir(parents=True, exist_ok=True)
    for path in (msa_dir / search.output, sidecar(msa_dir / search.output)):
        staged = msa_dir / f".{path.name}.partial"
        shutil.copyfile(source_dir / path.name, staged)
        os.replace(staged, path)
    return reusable(search, sequence, msa_dir, db)


def run_search(
    search: Search,
    target: Target,
    msa_dir: str | Path,
    db: Mapping[str, Any],
    cpus: int,
    timeout: float = tools.DEFAULT_TIMEOUT_S,
    reuse: bool = True,
    precomputed_dir: str | Path | None = None,
) -> list[Path]:
    """Make ``msa_dir / search.output`` for `target` (one scheduler task); returns it and its provenance file.

    Reuses a result already in `msa_dir`, or copies one from `precomputed_dir`, when its provenance says
    it was made for this sequence, databases and tool versions; otherwise runs the tools.
    """
    msa_dir = Path(msa_dir)
    msa_dir.mkdir(parents=True, exist_ok=True)
    result = msa_dir / search.output
    written = [result, sidecar(result)]
    if reuse and reusable(search, target.sequence, msa_dir, db):
        log.info("%s: reusing %s", target.id, result)
        return written
    if precomputed_dir is not None and adopt_precomputed(search, target.sequence, Path(precomputed_dir), msa_dir, db):
        log.info("%s: using precomputed %s from %s", target.id, search.output, precomputed_dir)
        return written
    query = msa_dir / f".query_{search.name}.fasta"
    write_query_fasta(target, query)
    inputs = {name: msa_dir / SEARCHES[name].output for name in search.needs}
    job = SearchJob(query, inputs, database_paths(search, db), result, cpus, timeout)
    try:
        run = search.run(search, job)
    finally:
        query.unlink(missing_ok=True)
    _record(search, target.sequence, msa_dir, db, run)
    log.info("%s: %s done in %.1f s (%s %s)", target.id, search.name, run.seconds, run.tool, run.version)
    return written


def run_batch_search(
    search: Search,
    targets: Sequence[tuple[Target, str | Path]],
    db: Mapping[str, Any],
    cpus: int,
    timeout: float = tools.DEFAULT_TIMEOUT_S,
) -> list[str]:
    """One tool run of a batch search (``search.run_batch``) for those of ``targets`` (each with its msa
    folder) that have no valid result yet; each result is written with its own provenance, so each
    target's search task then reuses it. Returns the ids of the targets searched. Targets with the same
    sequence are searched once."""
    if search.run_batch is None:
        raise ValueError(f"search {search.name!r} has no batch mode")
    todo = []
    for target, msa_dir in targets:
        msa_dir = Path(msa_dir)
        try:
            msa_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # left to the target's own search stage, which reports it
            log.warning("%s: not in the batch %s search: %s", target.id, search.name, exc)
            continue
        if not reusable(search, target.sequence, msa_dir, db):
            todo.append((target, msa_dir))
    if not todo:
        return []
    sequences = list(dict.fromkeys(t.sequence for t, _ in todo))
    firsts = {t.sequence: msa_dir / search.output for t, msa_dir in reversed(todo)}
    seconds = search.run_batch(search, sequences, database_paths(search, db), [firsts[s] for s in sequences],
                               cpus, timeout)
    run = tools.ToolRun(Path(), search.tools[0], binary_version(search.tools[0]), seconds)
    for target, msa_dir in todo:
        result = msa_dir / search.output
        if result != firsts[target.sequence]:
            atomic_write_text(result, firsts[target.sequence].read_text())
        _record(search, target.sequence, msa_dir, db, run, batch_size=len(sequences))
    log.info("%s: %d target(s) in one run, %.1f s", search.name, len(sequences), seconds)
    return [t.id for t, _ in todo]


def search_results(plan: Sequence[Search], msa_dir: str | Path) -> list[tuple[Search, Path]]:
    """The result file of each search of `plan` in `msa_dir`, as the raw features read them."""
    return [(search, Path(msa_dir) / search.output) for search in plan]
