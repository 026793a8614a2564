"""Raw (model-independent) features: sequence, MSA and template features, and their npz file.

The raw features of a target are what AlphaFold2's ``DataPipeline.process`` returns: built here
from the search result files, so the scheduler can run each search as its own task and call
:func:`raw_features_from_files` once they are all done (``af2cpu.outputs.save_features_npz`` writes
them to ``features.npz``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.preprocessing import parsers, templates, tools

FeatureDict = dict[str, np.ndarray]


def sequence_features(sequence: str, description: str) -> FeatureDict:
    """AlphaFold2's per-sequence features (aatype one-hot with unknown letters as X, indices, length)."""
    num_res = len(sequence)
    return {
        "aatype": rc.sequence_to_onehot(sequence, rc.restype_order_with_x, map_unknown_to_x=True),
        "between_segment_residues": np.zeros((num_res,), dtype=np.int32),
        "domain_name": np.array([description.encode("utf-8")], dtype=object),
        "residue_index": np.arange(num_res, dtype=np.int32),
        "seq_length": np.full((num_res,), num_res, dtype=np.int32),
        "sequence": np.array([sequence.encode("utf-8")], dtype=object),
    }


def single_sequence_msa(sequence: str, description: str = "query") -> parsers.Msa:
    """The MSA of a query with no homologues: the query alone."""
    return parsers.Msa([sequence], [[0] * len(sequence)], [description])


def msa_features(msas: Sequence[parsers.Msa], deduplicate: bool = True) -> FeatureDict:
    """Merge MSAs in the given order into AlphaFold2's MSA features.

    With `deduplicate` (AlphaFold2's behaviour), a row equal to an earlier row of any of the MSAs
    (match columns only) is dropped, so the query stays row 0 and the earlier MSA wins.
    # DISCREPANCY: ColabFold's packaging of the reference switched de-duplication off; DeepMind's
    # AlphaFold 2.3 de-duplicates, and so do we by default.
    """
    if not msas:
        raise ValueError("at least one MSA is needed")
    rows: list[list[int]] = []
    deletions: list[Sequence[int]] = []
    species: list[bytes] = []
    seen: set[str] = set()
    for index, msa in enumerate(msas):
        if not len(msa):
            raise ValueError(f"MSA {index} has no sequences")
        for sequence, deletion_row, description in zip(msa.sequences, msa.deletion_matrix, msa.descriptions):
            if deduplicate:
                if sequence in seen:
                    continue
                seen.add(sequence)
            try:
                rows.append([rc.HHBLITS_AA_TO_ID[residue] for residue in sequence])
            except KeyError as exc:
                raise InputError(f"MSA {index} row {description!r} contains the letter {exc}") from None
            deletions.append(deletion_row)
            species.append(parsers.species_id(description).encode("utf-8"))
    num_res = len(msas[0].sequences[0])
    return {
        "deletion_matrix_int": np.array(deletions, dtype=np.int32),
        "msa": np.array(rows, dtype=np.int32),
        "num_alignments": np.full((num_res,), len(rows), dtype=np.int32),
        "msa_species_identifiers": np.array(species, dtype=object),
    }


@dataclasses.dataclass(frozen=True)
class MsaFiles:
    """The search results of one target (any may be None when that search was not run)."""

    uniref90_sto: Path | None = None
    mgnify_sto: Path | None = None
    bfd_a3m: Path | None = None  # hhblits on BFD + UniRef30
    small_bfd_sto: Path | None = None  # jackhmmer on small BFD (reduced_dbs)
    pdb_hits_hhr: Path | None = None  # hhsearch on PDB70 (monomer)
    pdb_hits_sto: Path | None = None  # hmmsearch on pdb_seqres (multimer)


@dataclasses.dataclass(frozen=True)
class RawFeaturesResult:
    features: FeatureDict
    msa_sizes: dict[str, int]
    templates: templates.TemplateResult


def _read_msa(path: Path | None, kind: str, sequence: str, max_sequences: int | None) -> parsers.Msa | None:
    if path is None:
        return None
    if kind == "a3m":
        msa = parsers.read_a3m(path)
    else:
        msa = parsers.read_stockholm(path, max_sequences)
    if not len(msa):
        return single_sequence_msa(sequence)
    if msa.sequences[0] != sequence:
        raise InputError(f"{path}: the first row is not the query sequence; was it made for another target?")
    return msa


def raw_features_from_files(
    sequence: str,
    description: str,
    files: MsaFiles,
    template_settings: templates.TemplateSettings | None,
) -> RawFeaturesResult:
    """All raw features of one target from its search results (AlphaFold2's DataPipeline.process).

    MSAs merge in AlphaFold2's order UniRef90, BFD (or small BFD), MGnify; jackhmmer outputs are
    read capped at 10,000 (UniRef90) and 501 (MGnify) rows. Without any MSA the query alone is the
    MSA; without template hits (or settings) the template features are empty.
    """
    named = [
        ("uniref90", _read_msa(files.uniref90_sto, "sto", sequence, tools.UNIREF90_MAX_HITS)),
        ("bfd", _read_msa(files.bfd_a3m, "a3m", sequence, None)),
        ("small_bfd", _read_msa(files.small_bfd_sto, "sto", sequence, None)),
        ("mgnify", _read_msa(files.mgnify_sto, "sto", sequence, tools.MGNIFY_MAX_HITS)),
    ]
    msas = [(name, msa) for name, msa in named if msa is not None]
    if not msas:
        msas = [("query", single_sequence_msa(sequence))]
    features = {**sequence_features(sequence, description), **msa_features([m for _, m in msas])}

    template_result = _template_result(sequence, files, template_settings)
    features.update(template_result.features)
    return RawFeaturesResult(features, {name: len(msa) for name, msa in msas}, template_result)


def _template_result(
    sequence: str, files: MsaFiles, settings: templates.TemplateSettings | None
) -> templates.TemplateResult:
    if settings is None or (files.pdb_hits_hhr is None and files.pdb_hits_sto is None):
        return templates.TemplateResult(templates.no_template_features(), [], [])
    if files.pdb_hits_hhr is not None:
        return templates.featurize_templates(sequence, parsers.read_hhr(files.pdb_hits_hhr), settings)
    a3m = parsers.stockholm_to_a3m(Path(files.pdb_hits_sto).read_text(), remove_first_row_gaps=False)
    hits = parsers.parse_hmmsearch_a3m(sequence, a3m, skip_first=False, source=str(files.pdb_hits_sto))
    return templates.featurize_hmmsearch_templates(sequence, hits, settings)
