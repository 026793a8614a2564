"""mmCIF parsing for templates, with Biopython: SEQRES per author chain and the residues behind it.

For each protein chain we need its full SEQRES sequence (from ``_entity_poly_seq``) and, for every
SEQRES position, the observed residue of the first model or a note that it is missing. Atom
coordinates come from Biopython's structure, which resolves each alternate location to the one of
highest occupancy.
Modified residues such as MSE read as their parent letter (MSE -> M); insertion codes are part of
each residue's key. Release dates come from ``_pdbx_audit_revision_history``; old files that lack it
fall back to ``_database_PDB_rev`` and otherwise have no date (``release_date`` is None).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
from collections.abc import Mapping
from typing import Any

from Bio.PDB import MMCIFParser
from Bio.PDB.Structure import Structure

try:
    from Bio.Data.PDBData import protein_letters_3to1_extended as _LETTERS_3TO1
except ImportError:  # Biopython < 1.80
    from Bio.Data.SCOPData import protein_letters_3to1 as _LETTERS_3TO1


@dataclasses.dataclass(frozen=True)
class ResidueAtPosition:
    """The structure residue at one SEQRES position: Biopython's residue key, or missing."""

    chain_id: str
    residue_number: int | None
    insertion_code: str
    hetflag: str
    name: str
    is_missing: bool

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.hetflag, self.residue_number, self.insertion_code)


@dataclasses.dataclass(frozen=True)
class MmcifEntry:
    """A parsed entry: first model, header, SEQRES per author chain, SEQRES -> structure residues."""

    file_id: str
    header: Mapping[str, Any]
    structure: Structure
    chain_to_seqres: Mapping[str, str]
    seqres_to_structure: Mapping[str, Mapping[int, ResidueAtPosition]]

    @property
    def release_date(self) -> str | None:
        return self.header.get("release_date")


@dataclasses.dataclass(frozen=True)
class MmcifParseResult:
    """An entry, or None with the reason it could not be parsed."""

    entry: MmcifEntry | None
    error: str | None


def _column(info: Mapping[str, Any], key: str) -> list[str]:
    value = info.get(key, [])
    return value if isinstance(value, list) else [value]


def _loop(info: Mapping[str, Any], prefix: str) -> list[dict[str, str]]:
    keys = [k for k in info if k.startswith(prefix)]
    columns = [_column(info, k) for k in keys]
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"mmCIF loop {prefix} has columns of different lengths")
    return [dict(zip(keys, row)) for row in zip(*columns)]


def _header(info: Mapping[str, Any]) -> dict[str, Any]:
    methods = [m.lower() for m in _column(info, "_exptl.method")]
    header: dict[str, Any] = {"structure_method": ",".join(methods), "release_date": None}
    dates = _column(info, "_pdbx_audit_revision_history.revision_date") or _column(
        info, "_database_PDB_rev.date"
    )
    dates = [d for d in dates if d not in ("?", ".")]
    if dates:
        header["release_date"] = min(dates)
    header["resolution"] = 0.0
    for key in ("_refine.ls_d_res_high", "_em_3d_reconstruction.resolution", "_reflns.d_resolution_high"):
        values = _column(info, key)
        if values:
            try:
                header["resolution"] = float(values[0])
            except ValueError:
                pass
    return header


def _protein_chains(info: Mapping[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """label_asym_id -> SEQRES as (monomer id, number) for every entity with a peptide monomer."""
    polymers: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for row in _loop(info, "_entity_poly_seq."):
        polymers[row["_entity_poly_seq.entity_id"]].append(
            (row["_entity_poly_seq.mon_id"], int(row["_entity_poly_seq.num"]))
        )
    chem_type = {row["_chem_comp.id"]: row.get("_chem_comp.type", "") for row in _loop(info, "_chem_comp.")}
    entity_chains: dict[str, list[str]] = collections.defaultdict(list)
    for row in _loop(info, "_struct_asym."):
        entity_chains[row["_struct_asym.entity_id"]].append(row["_struct_asym.id"])
    chains = {}
    for entity_id, monomers in polymers.items():
        if any("peptide" in chem_type[mon_id].lower() for mon_id, _ in monomers):
            for chain_id in entity_chains[entity_id]:
                chains[chain_id] = monomers
    return chains


# DISCREPANCY: DeepMind's AlphaFold2 (Biopython 1.79) read SEQRES through SCOPData's extended table
# (MSE -> M, ...); ColabFold's packaging on Biopython >= 1.80 uses the 20-letter table (MSE -> X).
# We keep AlphaFold2's behaviour.
def _one_letter(mon_id: str) -> str:
    code = _LETTERS_3TO1.get(mon_id, "X")
    return code if len(code) == 1 else "X"


def parse_mmcif_text(file_id: str, text: str) -> MmcifParseResult:
    """Parse mmCIF `text`; never raises for a bad file, returns the reason instead."""
    try:
        return _parse(file_id, text)
    except Exception as exc:  # noqa: BLE001 - any failure costs this one template only
        return MmcifParseResult(None, f"{file_id}: cannot parse mmCIF: {type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=16)
def _parse(file_id: str, text: str) -> MmcifParseResult:
    parser = MMCIFParser(QUIET=True)
    structure = parser.get_structure(file_id, io.StringIO(text))
    info = parser._mmcif_dict  # Biopython keeps the raw dictionary only here.
    first_model = next(structure.get_models())
    chains = _protein_chains(info)
    if not chains:
        return MmcifParseResult(None, f"{file_id}: no protein chains")
    first_num = {chain: min(num for _, num in monomers) for chain, monomers in chains.items()}

    label_to_author: dict[str, str] = {}
    mappings: dict[str, dict[int, ResidueAtPosition]] = {}
    columns = [
        _column(info, "_atom_site." + k)
        for k in (
            "label_comp_id",
            "auth_asym_id",
            "label_asym_id",
            "auth_seq_id",
            "label_seq_id",
            "pdbx_PDB_ins_code",
            "group_PDB",
            "pdbx_PDB_model_num",
        )
    ]
    for comp_id, auth_chain, label_chain, auth_seq, label_seq, ins_code, group, model in zip(*columns):
        if model != "1":
            continue
        label_to_author[label_chain] = auth_chain
        if label_chain not in chains:
            continue
        if group == "HETATM":
            hetflag = "W" if comp_id in ("HOH", "WAT") else "H_" + comp_id
        else:
            hetflag = " "
        position = ResidueAtPosition(
            chain_id=auth_chain,
            residue_number=int(auth_seq),
            insertion_code=" " if ins_code in (".", "?") else ins_code,
            hetflag=hetflag,
            name=comp_id,
            is_missing=False,
        )
        mappings.setdefault(auth_chain, {})[int(label_seq) - first_num[label_chain]] = position

    chain_to_seqres = {}
    for label_chain, monomers in chains.items():
        author = label_to_author[label_chain]
        mapping = mappings[author]
        for index, (mon_id, _) in enumerate(monomers):
            if index not in mapping:
                mapping[index] = ResidueAtPosition(author, None, " ", " ", mon_id, True)
        chain_to_seqres[author] = "".join(_one_letter(mon_id) for mon_id, _ in monomers)

    entry = MmcifEntry(
        file_id=file_id,
        header=_header(info),
        structure=first_model,
        chain_to_seqres=chain_to_seqres,
        seqres_to_structure=mappings,
    )
    return MmcifParseResult(entry, None)
