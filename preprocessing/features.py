"""Raw (model-independent) features: sequence, MSA and template features, and their npz file.

The raw features of a target are what AlphaFold2's ``DataPipeline.process`` returns: built here
from the search result files, so the scheduler can run each search as its own task and call
:func:`raw_features_from_files` once they are all done (``af2cpu.io.save_features_npz`` writes
them to ``features.npz``). How each result is read (MSA or template hits, order, row cap) is declared
by its search's registry entry (``af2cpu.preprocessing.searches``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.preprocessing import parsers, templates
from af2cpu.preprocessing.searches import Search

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
class RawFeaturesResult:
    features: FeatureDict
    msa_sizes: dict[str, int]
    templates: templates.TemplateResult


def read_msa(path: Path, sequence: str, max_sequences: int | None = None) -> parsers.Msa:
    """The MSA of `sequence` in the A3M or Stockholm file at `path` (a Stockholm file's first
    `max_sequences` rows); the query alone when the file holds none."""
    if path.suffix == ".a3m":
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
    results: Sequence[tuple[Search, Path]],
    template_settings: templates.TemplateSettings | None,
) -> RawFeaturesResult:
    """All raw features of one target from its search results (AlphaFold2's DataPipeline.process).

    ``results`` pairs each finished search with its result file (``searches.search_results``). The
    MSAs merge in the order their searches declare (AlphaFold2's: UniRef90, BFD or small BFD, MGnify),
    each read with its search's row cap (10,000 UniRef90 and 501 MGnify rows). Without any MSA the
    query alone is the MSA; without template hits (or settings) the template features are empty.
    """
    read = sorted(((s.msa, read_msa(path, sequence, s.msa.max_sequences)) for s, path in results if s.msa is not None),
                  key=lambda item: item[0].order)
    msas = [(use.label, msa) for use, msa in read] or [("query", single_sequence_msa(sequence))]
    features = {**sequence_features(sequence, description), **msa_features([m for _, m in msas])}

    hits = [(s.template_hits, path) for s, path in results if s.template_hits is not None]
    template_result = _template_result(sequence, hits[0] if hits else None, template_settings)
    features.update(template_result.features)
    return RawFeaturesResult(features, {label: len(msa) for label, msa in msas}, template_result)


def _template_result(
    sequence: str, hits: tuple[str, Path] | None, settings: templates.TemplateSettings | None
) -> templates.TemplateResult:
    if settings is None or hits is None:
        return templates.TemplateResult(templates.no_template_features(), [], [])
    kind, path = hits
    return templates.featurize_templates(sequence, read_template_hits(kind, path, sequence), settings,
                                         hmmsearch=kind != "hhr")


def read_template_hits(kind: str, path: Path, sequence: str) -> list[parsers.TemplateHit]:
    """The template hits of a search result: an hhsearch ``.hhr`` (`kind` "hhr") or an hmmsearch
    Stockholm file (`kind` "sto", its rows aligned to `sequence`, the query)."""
    if kind == "hhr":
        return parsers.read_hhr(path)
    text = parsers.read_text(path)
    parsers.check_stockholm(text, str(path))
    a3m = parsers.stockholm_to_a3m(text, remove_first_row_gaps=False)
    return parsers.parse_hmmsearch_a3m(sequence, a3m, skip_first=False, source=str(path))
