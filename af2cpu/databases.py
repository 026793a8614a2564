"""The database layout: which files each preset needs and whether they are there.

HH-suite databases are ffindex pairs under a prefix (``<prefix>_a3m.ffdata`` ...); FASTA databases
are single files. ``check_databases`` is what `af2cpu doctor` and `af2cpu db check` report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

# Which databases a monomer run needs, per preset (AlphaFold2's run_alphafold.py requirements).
REQUIRED = {
    "full": ["uniref90", "mgnify", "bfd", "uniref30", "pdb70", "template_mmcif_dir", "obsolete_pdbs"],
    "reduced": ["uniref90", "mgnify", "small_bfd", "pdb70", "template_mmcif_dir", "obsolete_pdbs"],
    "mini": ["uniref90", "mgnify", "bfd", "uniref30", "pdb70", "template_mmcif_dir", "obsolete_pdbs"],
}
# Used by multimer presets only; reported but not required for monomer prediction.
OPTIONAL = ["pdb_seqres", "uniprot"]

# ffindex parts each HH-suite database must have (hhsearch needs the HMMs of PDB70).
HH_PARTS = {
    "bfd": ["a3m", "cs219"],
    "uniref30": ["a3m", "cs219"],
    "pdb70": ["a3m", "hhm", "cs219"],
}


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
    if name in HH_PARTS:
        return [Path(f"{path}_{part}.{ext}") for part in HH_PARTS[name] for ext in ("ffdata", "ffindex")]
    return [Path(path)]


def _problem(name: str, path: str) -> str:
    if name == "template_mmcif_dir":
        p = Path(path)
        if not p.is_dir():
            return f"directory {p} is missing"
        if not any(p.glob("*.cif")):
            return f"directory {p} has no .cif files"
        return ""
    for file in database_files(name, path):
        if not file.is_file():
            return f"file {file} is missing"
        if not os.access(file, os.R_OK):
            return f"file {file} is not readable"
        if file.stat().st_size == 0 and file.suffix != ".dat":
            return f"file {file} is empty"
    return ""


def check_databases(db: DictConfig) -> list[DbStatus]:
    """Status of every database of the configured preset (required ones first)."""
    preset = str(db.preset.value if hasattr(db.preset, "value") else db.preset)
    required = REQUIRED[preset]
    statuses = []
    for name in required + [n for n in OPTIONAL if n not in required]:
        path = str(db[name])
        problem = _problem(name, path)
        statuses.append(DbStatus(name, path, name in required, not problem, problem))
    return statuses


def fix_hint(preset: str) -> str:
    """What to do when required databases are missing."""
    if preset == "mini":
        return "the bundled mini databases are incomplete: reinstall af2cpu (pip install --force-reinstall af2cpu)"
    return (
        f"download them with AlphaFold2's scripts (scripts/download_all_data.sh <root> "
        f"{'reduced_dbs' if preset == 'reduced' else 'full_dbs'}) and set db.root=<root>, "
        "or point db.<name>=<path> at each file"
    )
