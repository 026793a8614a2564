"""The features of a complex: per-chain features, MSA pairing and merging (AlphaFold-Multimer's data path).

What AlphaFold 2.3's ``pipeline_multimer.DataPipeline.process`` returns, built from each unique chain's
monomer raw features (``af2cpu.preprocessing.features``: its MSAs and hmmsearch templates) and its
UniProt MSA, in these steps (Evans et al. 2021, "Protein complex prediction with AlphaFold-Multimer",
section 2.1 and supplement 1):

1. :func:`assembly_chains`: the chains grouped by sequence; each distinct sequence is an entity
   (1, 2, ... in order of first appearance), each copy a symmetry id (1, 2, ...) and every chain an
   asymmetric id, counted in entity order (so the residues of a complex follow entity order).
2. :func:`chain_features`: a chain's monomer features reshaped (integer ``aatype``, template
   ``aatype`` in AlphaFold's order) with its UniProt rows as the ``*_all_seq`` features.
3. :func:`pair_and_merge`: for a complex of more than one entity, rows of the UniProt MSAs of the
   same species are paired by rank of similarity to their query (:class:`SpeciesPairing`), unpaired
   rows already in the paired block are dropped, the MSAs are cropped to the multimer sizes
   (:data:`MSA_CROP_SIZE`, :data:`MAX_TEMPLATES`), copies of an entity are concatenated along the
   residues, the unpaired MSAs go block-diagonally below the paired rows, and the masks are made.
4. The MSA is padded to :data:`MIN_MSA_ROWS` rows.

A homomer (one entity) is not paired: its rows are its monomer MSA, one copy per chain side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.preprocessing import parsers, templates
from af2cpu.preprocessing.features import (
    FeatureDict,
    RawFeaturesResult,
    msa_features,
    raw_features_from_files,
    read_msa,
)
from af2cpu.preprocessing.searches import Search

MSA_CROP_SIZE = 2048  # rows of a chain's MSA, paired and unpaired together
MAX_TEMPLATES = 4  # templates per chain
MIN_MSA_ROWS = 512  # the merged MSA is padded to this many rows (the extra MSA is never empty)
MAX_UNIPROT_HITS = 50_000  # rows of the UniProt MSA a chain pairs from
MAX_ROWS_PER_SPECIES = 600  # a species with more rows in any chain's UniProt MSA is not paired
GAP = rc.restypes_with_x_and_gap.index("-")  # 21, the gap in both AlphaFold's and HHblits' order

_MSA = ("msa", "deletion_matrix")
_SEQUENCE = ("residue_index", "aatype", "all_atom_positions", "all_atom_mask", "asym_id", "entity_id",
             "sym_id", "entity_mask", "deletion_mean")
_TEMPLATE = ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
_PAD = {"msa": GAP, "deletion_matrix": 0}
# The keys of the merged example (DeepMind's feature_processing.REQUIRED_FEATURES that it holds).
EXAMPLE_KEYS = frozenset({
    "aatype", "all_atom_mask", "all_atom_positions", "assembly_num_chains", "asym_id", "bert_mask",
    "cluster_bias_mask", "deletion_matrix", "deletion_mean", "entity_id", "entity_mask", "msa", "msa_mask",
    "num_alignments", "num_templates", "residue_index", "seq_length", "seq_mask", "sym_id", "template_aatype",
    "template_all_atom_mask", "template_all_atom_positions",
})


@dataclasses.dataclass(frozen=True)
class AssemblyChain:
    """A chain's place in a complex: its input chain id, and its entity, symmetry and asymmetric ids."""

    chain_id: str
    sequence: str
    entity_id: int
    sym_id: int
    asym_id: int


def assembly_chains(chains: Sequence[tuple[str, str]]) -> list[AssemblyChain]:
    """The (chain id, sequence) pairs as AlphaFold-Multimer orders and numbers them.

    Entity ids count distinct sequences by first appearance, symmetry ids the copies of each, and
    asymmetric ids the chains in entity order (chains A=x, B=y, C=x give A 1/1/1, C 1/2/2, B 2/1/3).
    """
    entities: dict[str, list[str]] = {}
    for chain_id, sequence in chains:
        entities.setdefault(sequence, []).append(chain_id)
    result = []
    for entity_id, (sequence, chain_ids) in enumerate(entities.items(), start=1):
        for sym_id, chain_id in enumerate(chain_ids, start=1):
            result.append(AssemblyChain(chain_id, sequence, entity_id, sym_id, len(result) + 1))
    return result


def pairing_msa_features(msa: parsers.Msa) -> FeatureDict:
    """The ``*_all_seq`` features of a chain's UniProt MSA (its first :data:`MAX_UNIPROT_HITS` rows)."""
    capped = parsers.Msa(msa.sequences[:MAX_UNIPROT_HITS], msa.deletion_matrix[:MAX_UNIPROT_HITS],
                         msa.descriptions[:MAX_UNIPROT_HITS])
    found = msa_features([capped])
    return {f"{name}_all_seq": found[name] for name in ("msa", "deletion_matrix_int", "msa_species_identifiers")}


def chain_features(monomer: FeatureDict, chain: AssemblyChain, num_chains: int,
                   pairing: FeatureDict | None) -> FeatureDict:
    """One chain's features before merging: its monomer raw features (hmmsearch templates) reshaped for
    the multimer, its assembly ids and masks, and its UniProt rows (`pairing`) when the complex pairs."""
    num_res = len(chain.sequence)
    aatype = np.argmax(monomer["aatype"], axis=-1).astype(np.int32)
    template_aatype = np.argmax(monomer["template_aatype"], axis=-1).astype(np.int32)
    deletions = np.asarray(monomer["deletion_matrix_int"], dtype=np.float32)
    atom_mask = rc.STANDARD_ATOM_MASK[aatype]
    features = {
        "aatype": aatype,
        "residue_index": np.asarray(monomer["residue_index"]),
        "msa": np.asarray(monomer["msa"]),
        "deletion_matrix": deletions,
        "deletion_mean": np.mean(deletions, axis=0),
        # The template residues come in HHblits' order: mapped to AlphaFold's (an int64 table).
        "template_aatype": np.take(np.asarray(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE), template_aatype, axis=0),
        "template_all_atom_mask": monomer["template_all_atom_masks"],
        "template_all_atom_positions": monomer["template_all_atom_positions"],
        "all_atom_mask": atom_mask,
        "all_atom_positions": np.zeros((*atom_mask.shape, 3)),
        "assembly_num_chains": np.asarray(num_chains),
        "asym_id": np.full(num_res, float(chain.asym_id)),
        "sym_id": np.full(num_res, float(chain.sym_id)),
        "entity_id": np.full(num_res, float(chain.entity_id)),
        "entity_mask": np.ones(num_res, dtype=np.int32),
        "seq_length": np.asarray(num_res, dtype=np.int32),
    }
    if pairing is not None:
        features["msa_all_seq"] = pairing["msa_all_seq"]
        features["deletion_matrix_all_seq"] = np.asarray(pairing["deletion_matrix_int_all_seq"], dtype=np.float32)
        features["species_all_seq"] = pairing["msa_species_identifiers_all_seq"]
    return features


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices ordering `values` from largest to smallest, ties as pandas' ``sort_values(ascending=False)``
    breaks them (DeepMind's pairing sorts with it): reversed, numpy's default sort, reversed back."""
    reversed_index = np.arange(len(values))[::-1]
    return reversed_index[np.argsort(values[::-1], kind="quicksort")][::-1]


class SpeciesPairing:
    """Which UniProt rows of the chains form one paired row (AlphaFold-Multimer, supplement 1.2).

    The rows of each chain are grouped by the species of their description. For every species found in
    at least two chains (and with at most :data:`MAX_ROWS_PER_SPECIES` rows in each), each chain's rows
    of that species are ranked by their identity to its query and the k-th of every chain paired, for
    as many ranks as the chain with the fewest rows has; a chain without that species gets a gap row.
    The queries' row (product 0) comes first, then the paired rows spanning more chains before those
    spanning fewer, each group by the product of its row numbers (a stand-in for the hits' e-values),
    ties broken as numpy's default sort breaks them.
    """

    def __init__(self, msas: Sequence[np.ndarray], species: Sequence[np.ndarray]):
        self.msas, self.species = list(msas), list(species)

    def _species_rows(self, chain: int) -> dict[bytes, np.ndarray]:
        by_species: dict[bytes, list[int]] = {}
        for row, name in enumerate(self.species[chain]):
            by_species.setdefault(name, []).append(row)
        return {name: np.asarray(rows) for name, rows in by_species.items()}

    def rows(self) -> np.ndarray:
        """[paired rows, chains] row numbers into each chain's MSA, -1 for its gap row."""
        num_chains = len(self.msas)
        identity = []
        for msa in self.msas:
            identity.append(np.sum(msa[0][None] == msa, axis=-1) / float(msa.shape[1]))
        per_chain = [self._species_rows(c) for c in range(num_chains)]
        by_span: dict[int, list[np.ndarray]] = {span: [] for span in range(2, num_chains + 1)}
        by_span[num_chains].append(np.zeros(num_chains, dtype=np.int64))  # the queries, sorted with the rest
        for name in sorted(set().union(*per_chain)):
            if not name:
                continue  # the queries (and rows without a species)
            groups = [rows.get(name) for rows in per_chain]
            present = [g for g in groups if g is not None]
            if len(present) < 2 or any(len(g) > MAX_ROWS_PER_SPECIES for g in present):
                continue
            take = min(len(g) for g in present)
            columns = [g[_descending(identity[c][g])][:take] if g is not None else np.full(take, -1)
                       for c, g in enumerate(groups)]
            by_span[len(present)].extend(np.stack(columns, axis=1))
        ordered = []
        for span in sorted(by_span, reverse=True):
            if by_span[span]:
                paired = np.asarray(by_span[span])
                ordered.append(paired[np.argsort(np.abs(np.prod(paired, axis=1)), kind="quicksort")])
        return np.concatenate(ordered, axis=0)


def _pair(chains: list[FeatureDict]) -> None:
    """Replace each chain's UniProt rows by its paired rows; drop unpaired rows equal to a paired one."""
    rows = SpeciesPairing([c["msa_all_seq"] for c in chains], [c["species_all_seq"] for c in chains]).rows()
    for index, chain in enumerate(chains):
        num_res = chain["msa_all_seq"].shape[1]
        msa = np.concatenate([chain["msa_all_seq"], np.full((1, num_res), GAP, chain["msa_all_seq"].dtype)])
        deletions = np.concatenate([chain["deletion_matrix_all_seq"],
                                    np.zeros((1, num_res), chain["deletion_matrix_all_seq"].dtype)])
        chain["msa_all_seq"], chain["deletion_matrix_all_seq"] = msa[rows[:, index]], deletions[rows[:, index]]
        paired = {row.tobytes() for row in chain["msa_all_seq"]}
        keep = [i for i, row in enumerate(chain["msa"]) if row.tobytes() not in paired]
        for name in _MSA:
            chain[name] = chain[name][keep]


def _crop(chain: FeatureDict, paired: bool) -> None:
    """Cut a chain's MSAs to :data:`MSA_CROP_SIZE` rows (paired rows count against its unpaired ones)
    and its templates to :data:`MAX_TEMPLATES`, then pad the templates to that many."""
    crop = MSA_CROP_SIZE
    if paired:
        paired_crop = min(chain["msa_all_seq"].shape[0], MSA_CROP_SIZE // 2)
        for name in _MSA:
            chain[f"{name}_all_seq"] = chain[f"{name}_all_seq"][:paired_crop]
        non_gap = int(np.sum(np.any(chain["msa_all_seq"] != GAP, axis=1)))
        crop = max(MSA_CROP_SIZE - min(non_gap, paired_crop), 0)
    for name in _MSA:
        chain[name] = chain[name][:crop]
    num_templates = min(chain["template_aatype"].shape[0], MAX_TEMPLATES)
    chain["num_templates"] = np.asarray(num_templates, dtype=np.int32)
    for name in _TEMPLATE:
        kept = chain[name][:num_templates]
        chain[name] = np.pad(kept, [(0, MAX_TEMPLATES - num_templates)] + [(0, 0)] * (kept.ndim - 1))


def _block_diagonal(blocks: Sequence[np.ndarray], pad: float) -> np.ndarray:
    """`blocks` on the diagonal of one matrix, `pad` elsewhere."""
    out = np.full((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), pad, dtype=blocks[0].dtype)
    row = col = 0
    for block in blocks:
        out[row:row + block.shape[0], col:col + block.shape[1]] = block
        row, col = row + block.shape[0], col + block.shape[1]
    return out


def _entities(chains: list[FeatureDict], paired: bool) -> list[FeatureDict]:
    """One feature dict per entity: its chains' features side by side (its MSA rows are shared)."""
    groups: dict[float, list[FeatureDict]] = {}
    for chain in chains:
        groups.setdefault(float(chain["entity_id"][0]), []).append(chain)
    entities = []
    for entity_id in sorted(groups):
        copies = groups[entity_id]
        entity = {name: np.concatenate([c[name] for c in copies], axis=1)
                  for name in (*_MSA, *_TEMPLATE, *([f"{n}_all_seq" for n in _MSA] if paired else []))}
        entity.update({name: np.concatenate([c[name] for c in copies]) for name in _SEQUENCE})
        entity.update({name: copies[0][name] for name in ("assembly_num_chains", "num_templates")})
        entities.append(entity)
    return entities


def pair_and_merge(chains: Sequence[FeatureDict]) -> FeatureDict:
    """The example of a complex from its chains' features (:func:`chain_features`, in assembly order):
    pairing (when the complex has more than one entity), cropping, merging, masks, padding."""
    chains = [dict(c) for c in chains]
    paired = len({float(c["entity_id"][0]) for c in chains}) > 1
    if paired:
        _pair(chains)
    for chain in chains:
        _crop(chain, paired)
    entities = _entities(chains, paired)

    example = {name: np.concatenate([e[name] for e in entities]) for name in _SEQUENCE}
    example.update({name: np.concatenate([e[name] for e in entities], axis=1) for name in _TEMPLATE})
    example.update({name: _block_diagonal([e[name] for e in entities], _PAD[name]) for name in _MSA})
    example["assembly_num_chains"] = entities[0]["assembly_num_chains"]
    example["num_templates"] = entities[0]["num_templates"]
    masks = [np.ones(e["msa"].shape, dtype=np.float32) for e in entities]
    bert_mask = _block_diagonal(masks, 0)
    if paired:
        for name in _MSA:
            example[name] = np.concatenate([np.concatenate([e[f"{name}_all_seq"] for e in entities], axis=1),
                                            example[name]])
        paired_rows = entities[0]["msa_all_seq"].shape[0]
        bert_mask = np.concatenate([np.ones((paired_rows, bert_mask.shape[1]), np.float32), bert_mask])
        # Only the paired queries' row is always among the cluster centres.
        cluster_bias_mask = np.zeros(example["msa"].shape[0])
        cluster_bias_mask[0] = 1
    else:
        # Every entity's query row (the first of its block) is always among the cluster centres.
        cluster_bias_mask = np.concatenate([np.eye(1, e["msa"].shape[0])[0] for e in entities])
    example["bert_mask"], example["cluster_bias_mask"] = bert_mask, cluster_bias_mask
    example["msa"] = np.take(np.asarray(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE), example["msa"]).astype(np.int32)
    example["seq_length"] = np.asarray(example["aatype"].shape[0], dtype=np.int32)
    example["num_alignments"] = np.asarray(example["msa"].shape[0], dtype=np.int32)
    seq_mask = (example["entity_id"] > 0).astype(np.float32)
    example["seq_mask"] = seq_mask
    example["msa_mask"] = np.ones_like(example["msa"], dtype=np.float32) * seq_mask[None]
    return _pad_msa(example)


def _pad_msa(example: FeatureDict) -> FeatureDict:
    """Padding rows (mask 0) up to :data:`MIN_MSA_ROWS`, so the extra MSA is never empty."""
    missing = MIN_MSA_ROWS - example["msa"].shape[0]
    if missing > 0:
        for name in ("msa", "deletion_matrix", "bert_mask", "msa_mask"):
            example[name] = np.pad(example[name], ((0, missing), (0, 0)))
        example["cluster_bias_mask"] = np.pad(example["cluster_bias_mask"], (0, missing))
    return example


def complex_features(chains: Sequence[tuple[str, str]], monomer: dict[str, FeatureDict],
                     pairing: dict[str, parsers.Msa]) -> tuple[FeatureDict, list[AssemblyChain]]:
    """The example of the complex of (chain id, sequence) `chains` from each distinct sequence's monomer
    raw features and UniProt MSA (both keyed by sequence), and its chains in the example's order."""
    assembly = assembly_chains(chains)
    pairs = len({c.entity_id for c in assembly}) > 1
    pairing_features = {seq: pairing_msa_features(msa) for seq, msa in pairing.items()} if pairs else {}
    per_chain = [chain_features(monomer[c.sequence], c, len(assembly), pairing_features.get(c.sequence))
                 for c in assembly]
    return pair_and_merge(per_chain), assembly


@dataclasses.dataclass(frozen=True)
class ComplexFeaturesResult:
    """A complex's example, its chains in the example's order, and each distinct chain's raw features."""

    features: FeatureDict
    chains: list[AssemblyChain]
    monomers: dict[str, RawFeaturesResult]  # by sequence
    pairing_sizes: dict[str, int]  # rows of each distinct sequence's UniProt MSA, by sequence


def complex_features_from_files(
    chains: Sequence[tuple[str, str]],
    results: dict[str, Sequence[tuple[Search, Path]]],
    template_settings: templates.TemplateSettings | None,
) -> ComplexFeaturesResult:
    """The example of the complex of (chain id, sequence) `chains` from the search results of each
    distinct sequence (`results`, keyed by sequence: the multimer plan's searches and their files).

    Each distinct sequence's monomer raw features come from its MSAs and hmmsearch templates as for a
    monomer; its UniProt result (the search with ``pairing``) is read only when the complex pairs.
    """
    firsts: dict[str, str] = {}  # sequence -> the id of its first chain
    for chain_id, sequence in chains:
        firsts.setdefault(sequence, chain_id)
    monomers = {seq: raw_features_from_files(seq, f"chain_{chain_id}", results[seq], template_settings)
                for seq, chain_id in firsts.items()}
    pairing: dict[str, parsers.Msa] = {}
    if len(monomers) > 1:
        for seq in monomers:
            path = next(path for search, path in results[seq] if search.pairing)
            pairing[seq] = read_msa(path, seq, MAX_UNIPROT_HITS)
    features, assembly = complex_features(chains, {s: r.features for s, r in monomers.items()}, pairing)
    return ComplexFeaturesResult(features, assembly, monomers, {s: len(m) for s, m in pairing.items()})
