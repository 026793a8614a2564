"""The chains of a complex as its output folder shows them: residue spans, chain ids, the paired MSA rows.

A complex's ``features.npz`` is AlphaFold-Multimer's example: its residues come chain after chain in
asymmetric-id order (``asym_id``, 1-based, entity by entity), and the structure files name chain
``asym_id`` by the ``asym_id``-th letter of ``A, B, ...`` (:data:`af2cpu.common.protein.PDB_CHAIN_IDS`),
as AlphaFold2 writes them. That order can differ from the input's (chains A=x, B=y, C=x of the input
are A, C, B in the structure: AlphaFold-Multimer groups copies of a sequence), so a
:class:`ChainSpan` keeps both ids. ``features_report.json`` lists the chains with their input id,
header and the chain whose searches they share (``searched_as``: ``msas/<that id>/``).

The merged MSA holds, for a complex of several distinct sequences, the paired rows first, then each
entity's unpaired rows block-diagonally, then padding rows (``msa_mask`` 0) up to 512 rows. The
number of paired rows is not a feature: :func:`paired_msa_rows` reads it from ``bert_mask``, which
is 1 on every column of a paired row and only on its own entity's columns for an unpaired row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.common.protein import PDB_CHAIN_IDS


@dataclasses.dataclass(frozen=True)
class ChainSpan:
    """One chain of a complex: its residues ``start:end`` (0-based, in the complex's residue order)."""

    id: str  # the chain id of the structure files (A, B, ... by asym_id)
    input_id: str  # the chain's id in the input (target.json, msas/<id>/ when it was searched itself)
    start: int
    end: int
    entity_id: int
    sym_id: int
    sequence: str = ""
    description: str = ""
    searched_as: str = ""  # the input id of the chain whose search results it uses (msas/<searched_as>/)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def residues(self) -> slice:
        """The chain's residues in per-residue arrays (pLDDT, one PAE axis)."""
        return slice(self.start, self.end)


def is_complex(features: Mapping[str, Any] | None) -> bool:
    """True for AlphaFold-Multimer's example (it has ``asym_id``), False for monomer features."""
    return features is not None and "asym_id" in features


def chain_spans(features: Mapping[str, Any] | None, report_chains: Sequence[Mapping[str, Any]] = ()) -> list[ChainSpan]:
    """The chains of a complex from its example (``asym_id``, ``entity_id``, ``sym_id``, ``aatype``) and
    the ``chains`` of its ``features_report.json`` (input ids, headers, ``searched_as``); from the report
    alone when there are no features. [] for a monomer's features and no report."""
    by_asym = {int(c["asym_id"]): c for c in report_chains if "asym_id" in c}
    spans = []
    if is_complex(features):
        asym = np.asarray(features["asym_id"]).astype(int)
        aatype = np.asarray(features["aatype"])
        aatype = aatype.argmax(-1) if aatype.ndim == 2 else aatype
        starts = np.flatnonzero(np.r_[True, asym[1:] != asym[:-1]])
        for start, end in zip(starts, [*starts[1:], len(asym)]):
            number = int(asym[start])
            info = by_asym.get(number, {})
            spans.append(_span(number, int(start), int(end), int(features["entity_id"][start]),
                               int(features["sym_id"][start]),
                               "".join(rc.restypes_with_x[a] for a in aatype[start:end]), info))
        return spans
    start = 0
    for number, info in sorted(by_asym.items()):
        length = int(info["length"])
        spans.append(_span(number, start, start + length, int(info["entity_id"]), int(info["sym_id"]), "", info))
        start += length
    return spans


def _span(asym_id: int, start: int, end: int, entity_id: int, sym_id: int, sequence: str,
          info: Mapping[str, Any]) -> ChainSpan:
    if not 1 <= asym_id <= len(PDB_CHAIN_IDS):
        raise ValueError(f"asym_id {asym_id} has no chain id: a structure file holds at most {len(PDB_CHAIN_IDS)} chains")
    chain_id = PDB_CHAIN_IDS[asym_id - 1]
    input_id = str(info.get("id", chain_id))
    return ChainSpan(chain_id, input_id, start, end, entity_id, sym_id, sequence,
                     str(info.get("description", "")), str(info.get("searched_as", input_id)))


def real_msa_rows(features: Mapping[str, Any]) -> np.ndarray:
    """The MSA without its padding rows (those whose ``msa_mask`` is 0 everywhere; a monomer has none)."""
    msa = np.asarray(features["msa"])
    if "msa_mask" not in features:
        return msa
    return msa[np.asarray(features["msa_mask"]).any(axis=1)]


def paired_msa_rows(features: Mapping[str, Any]) -> int:
    """How many rows at the top of a complex's MSA are paired across chains (0 for a homomer, a monomer,
    or an example without ``bert_mask``): the leading rows whose ``bert_mask`` covers every residue."""
    if not is_complex(features) or "bert_mask" not in features:
        return 0
    if len(np.unique(np.asarray(features["entity_id"]))) < 2:
        return 0  # one entity: AlphaFold-Multimer does not pair, every row spans all its copies
    full = np.asarray(features["bert_mask"]).all(axis=1)
    return int(np.argmin(full)) if not full.all() else len(full)
