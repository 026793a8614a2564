"""The database catalogue: every database af2cpu can read, its place in the official layout, its files.

One :class:`Database` entry per database says where AlphaFold2's download scripts put it under the
database root and what it is made of: a FASTA or text file, an HH-suite ffindex database (files
``<prefix>_<part>.ffdata``/``.ffindex``), or a folder of mmCIF files. The ``db`` section of the
configuration is derived from this list (``af2cpu.config.DatabaseConfig``: one path per entry), and
:func:`check_databases` is what `af2cpu doctor` and `af2cpu db check` report. Which databases a run
needs is decided by the searches it makes (``af2cpu.preprocessing.searches.required_databases``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Database:
    """One database of the official layout."""

    name: str  # the key in the ``db`` config section
    path: str  # relative to the database root, as AlphaFold2's download scripts lay it out
    kind: str = "file"  # "file" | "hh" (an ffindex prefix) | "mmcif_dir" | "mmseqs" (an MMseqs2 database prefix)
    hh_parts: tuple[str, ...] = ()  # the ffindex parts an "hh" database must have
    may_be_empty: bool = False  # e.g. obsolete.dat of a fresh PDB mirror
    about: str = ""
    # The parts of an "mmseqs" database (suffixes of its prefix): ColabFold's expandable profile databases
    # by default; a sequence database made by `mmseqs createdb` has its sequences and headers ("_h").
    mmseqs_parts: tuple[str, ...] = ("", "_seq", "_aln")


SEQUENCE_DB_PARTS = ("", "_h")  # an MMseqs2 sequence database: sequences and headers

DATABASES: tuple[Database, ...] = (
    Database("uniref90", "uniref90/uniref90.fasta", about="UniRef90 (jackhmmer)"),
    Database("mgnify", "mgnify/mgy_clusters_2022_05.fa", about="MGnify clusters (jackhmmer)"),
    Database("bfd", "bfd/bfd_metaclust_clu_complete_id30_c90_final_seq.sorted_opt", "hh", ("a3m", "cs219"),
             about="BFD (hhblits)"),
    Database("uniref30", "uniref30/UniRef30_2021_03", "hh", ("a3m", "cs219"), about="UniRef30 (hhblits)"),
    Database("small_bfd", "small_bfd/bfd-first_non_consensus_sequences.fasta",
             about="small BFD (jackhmmer, reduced_dbs)"),
    Database("pdb70", "pdb70/pdb70", "hh", ("a3m", "hhm", "cs219"), about="PDB70 (hhsearch templates)"),
    Database("template_mmcif_dir", "pdb_mmcif/mmcif_files", "mmcif_dir", about="PDB mmCIF files (templates)"),
    Database("obsolete_pdbs", "pdb_mmcif/obsolete.dat", may_be_empty=True, about="obsolete PDB entries"),
    Database("pdb_seqres", "pdb_seqres/pdb_seqres.txt", about="PDB SEQRES (hmmsearch templates, multimer)"),
    Database("uniprot", "uniprot/uniprot.fasta", about="UniProt (MSA pairing, multimer)"),
    # ColabFold's databases (setup_databases.sh names), MMseqs2 databases with their _seq and _aln parts;
    # db=colabfold finds them directly under its root.
    Database("colabfold_uniref30", "colabfold/uniref30_2302_db", "mmseqs", about="UniRef30 (MMseqs2, search=mmseqs2)"),
    Database("colabfold_envdb", "colabfold/colabfold_envdb_202108_db", "mmseqs",
             about="ColabFold environmental database (MMseqs2, search=mmseqs2)"),
    # The UniProt FASTA above as an MMseqs2 sequence database (`mmseqs createdb`): a complex's rows to
    # pair under search=mmseqs2.
    Database("uniprot_mmseqs", "uniprot/uniprot_db", "mmseqs", mmseqs_parts=SEQUENCE_DB_PARTS,
             about="UniProt (MMseqs2, MSA pairing, multimer, search=mmseqs2)"),
)
# The parts of an MMseqs2 database ColabFold's search reads: the searched sequences or profiles, the
# member sequences of each cluster and the alignments of the clusters to their members.
MMSEQS_PARTS = Database.mmseqs_parts
CATALOGUE: dict[str, Database] = {db.name: db for db in DATABASES}


@dataclass(frozen=True)
class DbStatus:
    """One configured database: its files, whether they are usable, and what is wrong if not."""

    name: str
    path: str
    required: bool
    ok: bool
    problem: str = ""


def database_files(name: str, path: str) -> list[Path]:
    """The files that make up database `name` configured at `path`."""
    db = CATALOGUE[name]
    if db.kind == "hh":
        return [Path(f"{path}_{part}.{ext}") for part in db.hh_parts for ext in ("ffdata", "ffindex")]
    if db.kind == "mmseqs":
        files = [Path(f"{path}{part}{ext}") for part in db.mmseqs_parts for ext in (".dbtype", "", ".index")]
        return files + [Path(f"{path}.idx{ext}") for ext in ("", ".index") if os.path.isfile(f"{path}.idx{ext}")]
    return [Path(path)]


def mmseqs_indexed(path: str) -> bool:
    """Whether ``mmseqs createindex`` made an index of the MMseqs2 database at prefix ``path``."""
    return os.path.isfile(f"{path}.idx") or os.path.isfile(f"{path}.idx.index")


def mmseqs_index_command(path: str) -> str:
    """The command that indexes the MMseqs2 database at prefix ``path`` (as ColabFold's set-up does)."""
    return f"mmseqs createindex {path} {Path(path).parent / 'tmp'} --remove-tmp-files 1"


def mmseqs_database_problem(path: str, require_index: bool, parts: tuple[str, ...] = MMSEQS_PARTS) -> str:
    """What is wrong with the MMseqs2 database at prefix ``path`` made of ``parts`` ("" when usable): a
    ColabFold profile database (the default parts) or a sequence database (:data:`SEQUENCE_DB_PARTS`)."""
    for part in parts:
        for ext in (".dbtype", "", ".index"):
            file = Path(f"{path}{part}{ext}")
            if not file.is_file():
                index = mmseqs_index_command(path)
                if parts == SEQUENCE_DB_PARTS:
                    return f"file {file} is missing: build the database with `mmseqs createdb <FASTA> {path}`, then `{index}`"
                return (f"file {file} is missing: build the database as ColabFold's setup_databases.sh does "
                        f"(`mmseqs tsv2exprofiledb <downloaded name> {path}`, then `{index}`)")
    if require_index and not mmseqs_indexed(path):
        return f"{path} is not indexed (no {path}.idx): run `{mmseqs_index_command(path)}`"
    return ""


def database_problem(name: str, path: str, require_index: bool = True) -> str:
    """What is wrong with database `name` at `path` ("" when it is usable). An MMseqs2 database must be
    indexed when `require_index` (the full-size ones: searching an unindexed one is far slower)."""
    db = CATALOGUE[name]
    if db.kind == "mmseqs":
        return mmseqs_database_problem(path, require_index, db.mmseqs_parts)
    if db.kind == "mmcif_dir":
        folder = Path(path)
        if not folder.is_dir():
            return f"directory {folder} is missing"
        if not any(folder.glob("*.cif")):
            return f"directory {folder} has no .cif files"
        return ""
    for file in database_files(name, path):
        if not file.is_file():
            return f"file {file} is missing"
        if not os.access(file, os.R_OK):
            return f"file {file} is not readable"
        if file.stat().st_size == 0 and not db.may_be_empty:
            return f"file {file} is empty"
    return ""


def check_databases(db: Mapping[str, Any], required: Collection[str]) -> list[DbStatus]:
    """Status of every catalogued database configured in ``db`` (the ``db`` config section), the
    ``required`` ones first."""
    order = [d.name for d in DATABASES if d.name in required] + [d.name for d in DATABASES if d.name not in required]
    statuses = []
    require_index = str(db["preset"]) != "mini"  # the bundled mini databases are searched unindexed
    for name in order:
        path = str(db[name])
        problem = database_problem(name, path, require_index)
        statuses.append(DbStatus(name, path, name in required, not problem, problem))
    return statuses


def fix_hint(preset: str) -> str:
    """What to do when required databases of database preset `preset` are missing."""
    if preset == "mini":
        return "the bundled mini databases are incomplete: reinstall af2cpu (pip install --force-reinstall af2cpu)"
    if preset == "colabfold":
        return ("build the ColabFold databases with ColabFold's setup_databases.sh <root> (MMseqs2 databases, "
                "indexed) and set db.root=<root>; PDB70 and the mmCIF files (templates) as in AlphaFold2's "
                "layout under the same root, or db.pdb70=..., db.template_mmcif_dir=...")
    return (
        f"download them with AlphaFold2's scripts (scripts/download_all_data.sh <root> "
        f"{'reduced_dbs' if preset == 'reduced' else 'full_dbs'}) and set db.root=<root>, "
        "or point db.<name>=<path> at each file"
    )
