"""The input pipeline in numpy: raw features -> the processed features one model preset consumes.

This is AlphaFold2's TensorFlow input pipeline (``model/tf/input_pipeline.py`` and
``data_transforms.py``) for inference, as pure numpy functions:

- once per target: restype remapping, masks, the MSA profile, template aatype and pseudo-β,
  atom14/atom37 index maps;
- once per recycle (``num_recycle + 1`` samples, stacked on a leading axis): MSA cluster sampling
  with the query first (Suppl. 1.2.7), 15 % BERT-style masking of the cluster rows (Suppl. 1.9.9),
  assignment of the remaining rows to their nearest cluster centre and cluster profiles/deletion
  means (Suppl. 1.2.7), the extra MSA (a random subset of the remaining rows), ``msa_feat`` and
  ``target_feat`` (Suppl. Table 1), and the first ``max_templates`` templates.

The output has the names, dtypes and layout of ``alphafold.model.features.np_example_to_features``,
leading recycle axis included. Rows are not padded to 508/5120/4 unless ``pad_to_fixed_size`` asks
for it (padding adds masked rows that change nothing). Random draws come from a numpy generator
seeded by ``(seed, sample index)``, so a seed reproduces every sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from af2cpu.common import residue_constants as rc

FeatureDict = dict[str, np.ndarray]

MSA_FEATURES = ("msa", "deletion_matrix", "msa_mask", "msa_row_mask", "bert_mask", "true_msa")
TEMPLATE_RAW_FEATURES = (
    "template_all_atom_positions", "template_sum_probs", "template_aatype",
    "template_all_atom_masks", "template_domain_names",
)  # fmt: skip

# The features the model receives (AlphaFold2's eval feature schema, those an inference run has).
OUTPUT_FEATURES = (
    "aatype", "atom14_atom_exists", "atom37_atom_exists", "bert_mask", "extra_deletion_value",
    "extra_has_deletion", "extra_msa", "extra_msa_mask", "extra_msa_row_mask", "is_distillation",
    "msa_feat", "msa_mask", "msa_row_mask", "random_crop_to_size_seed", "residue_index",
    "residx_atom14_to_atom37", "residx_atom37_to_atom14", "seq_length", "seq_mask", "target_feat",
    "template_aatype", "template_all_atom_masks", "template_all_atom_positions", "template_mask",
    "template_pseudo_beta", "template_pseudo_beta_mask", "template_sum_probs", "true_msa",
)  # fmt: skip

# Which axes of each output are MSA rows ("msa"), extra rows ("extra") or templates ("templates").
_PAD_AXES = {
    "bert_mask": {0: "msa"}, "msa_feat": {0: "msa"}, "msa_mask": {0: "msa"}, "msa_row_mask": {0: "msa"},
    "true_msa": {0: "msa"}, "extra_deletion_value": {0: "extra"}, "extra_has_deletion": {0: "extra"},
    "extra_msa": {0: "extra"}, "extra_msa_mask": {0: "extra"}, "extra_msa_row_mask": {0: "extra"},
    "template_aatype": {0: "templates"}, "template_all_atom_masks": {0: "templates"},
    "template_all_atom_positions": {0: "templates"}, "template_mask": {0: "templates"},
    "template_pseudo_beta": {0: "templates"}, "template_pseudo_beta_mask": {0: "templates"},
    "template_sum_probs": {0: "templates"},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The input-pipeline settings of one model preset (AlphaFold2's ``config.data``)."""

    use_templates: bool = True
    num_msa_clusters: int = 508  # 512, less 4 template rows when templates are embedded
    max_extra_msa: int = 5120
    max_templates: int = 4
    num_recycle: int = 3
    resample_msa_in_recycling: bool = True
    num_ensemble: int = 1
    masked_msa_replace_fraction: float = 0.15
    masked_msa_uniform_prob: float = 0.1
    masked_msa_profile_prob: float = 0.1
    masked_msa_same_prob: float = 0.1
    pad_to_fixed_size: bool = False

    @classmethod
    def from_preset(cls, preset, **overrides) -> PipelineSettings:
        """Settings of a model preset (an ``af2cpu.model.presets.Preset``), with field overrides."""
        values = {
            "use_templates": preset.use_templates,
            "num_msa_clusters": preset.num_msa_clusters,
            "max_extra_msa": preset.max_extra_msa,
            "max_templates": preset.max_templates,
            "num_recycle": preset.num_recycle,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def num_samples(self) -> int:
        if self.resample_msa_in_recycling:
            return self.num_ensemble * (self.num_recycle + 1)
        return self.num_ensemble


# ---------------------------------------------------------------------------------------------
# Per-target transforms


def _one_hot(indices: np.ndarray, depth: int) -> np.ndarray:
    """float32 one-hot; indices outside [0, depth) give all zeros (as tf.one_hot)."""
    indices = np.asarray(indices)
    out = np.zeros(indices.shape + (depth,), dtype=np.float32)
    valid = (indices >= 0) & (indices < depth)
    np.put_along_axis(
        out, np.where(valid, indices, 0)[..., None], valid[..., None].astype(np.float32), axis=-1
    )
    return out


def atom14_masks(aatype: np.ndarray) -> FeatureDict:
    """Per-residue atom14 <-> atom37 index maps and existence masks (unknown residues: none)."""
    to37 = np.zeros((21, 14), dtype=np.int32)
    to14 = np.zeros((21, 37), dtype=np.int32)
    exists14 = np.zeros((21, 14), dtype=np.float32)
    exists37 = np.zeros((21, 37), dtype=np.float32)
    for index, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        names = rc.restype_name_to_atom14_names[resname]
        for slot, name in enumerate(names):
            if name:
                to37[index, slot] = rc.atom_order[name]
                to14[index, rc.atom_order[name]] = slot
                exists14[index, slot] = 1.0
        for name in rc.residue_atoms[resname]:
            exists37[index, rc.atom_order[name]] = 1.0
    return {
        "atom14_atom_exists": exists14[aatype],
        "residx_atom14_to_atom37": to37[aatype],
        "residx_atom37_to_atom14": to14[aatype],
        "atom37_atom_exists": exists37[aatype],
    }


def pseudo_beta(
    aatype: np.ndarray, positions: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cβ position (Cα for glycine) and its mask."""
    is_gly = aatype == rc.restype_order["G"]
    ca, cb = rc.atom_order["CA"], rc.atom_order["CB"]
    position = np.where(is_gly[..., None], positions[..., ca, :], positions[..., cb, :])
    mask = np.where(is_gly, masks[..., ca], masks[..., cb]).astype(np.float32)
    return position, mask


def prepare_target(raw: Mapping[str, np.ndarray], use_templates: bool) -> FeatureDict:
    """The per-target (non-resampled) part of the pipeline."""
    new_order = np.array(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE, dtype=np.int32)
    msa = new_order[np.asarray(raw["msa"])].astype(np.int32)
    deletion = raw["deletion_matrix"] if "deletion_matrix" in raw else raw["deletion_matrix_int"]
    num_res = int(np.asarray(raw["seq_length"]).reshape(-1)[0])
    aatype = np.argmax(raw["aatype"], axis=-1).astype(np.int32)
    features: FeatureDict = {
        "aatype": aatype,
        "residue_index": np.asarray(raw["residue_index"]).astype(np.int32),
        "seq_length": np.int32(num_res),
        "between_segment_residues": np.asarray(raw["between_segment_residues"]).astype(np.int32),
        "msa": msa,
        "deletion_matrix": np.asarray(deletion).astype(np.float32),
        "is_distillation": np.float32(0.0),
        "seq_mask": np.ones(aatype.shape, dtype=np.float32),
        "msa_mask": np.ones(msa.shape, dtype=np.float32),
        "msa_row_mask": np.ones(msa.shape[:1], dtype=np.float32),
    }
    num_rows, width = msa.shape
    counts = np.bincount((np.arange(width) * 22 + msa).ravel(), minlength=width * 22).reshape(width, 22)
    features["hhblits_profile"] = counts.astype(np.float32) / np.float32(num_rows)
    if use_templates:
        positions = np.asarray(raw["template_all_atom_positions"]).astype(np.float32)
        masks = np.asarray(raw["template_all_atom_masks"]).astype(np.float32)
        one_hot = np.asarray(raw["template_aatype"])
        if positions.size == 0:  # no templates: AlphaFold2 stores shapeless empty arrays
            positions = np.zeros((0, num_res, rc.atom_type_num, 3), np.float32)
            masks = np.zeros((0, num_res, rc.atom_type_num), np.float32)
            one_hot = np.zeros((0, num_res, 22), np.float32)
        template_aatype = new_order[np.argmax(one_hot, axis=-1)].astype(np.int32)
        features["template_aatype"] = template_aatype.reshape(masks.shape[:2])
        features["template_all_atom_positions"] = positions
        features["template_all_atom_masks"] = masks
        features["template_sum_probs"] = (
            np.asarray(raw["template_sum_probs"]).astype(np.float32).reshape(-1, 1)
        )
        features["template_mask"] = np.ones(len(raw["template_domain_names"]), dtype=np.float32)
        beta, beta_mask = pseudo_beta(features["template_aatype"], positions, masks)
        features["template_pseudo_beta"] = beta
        features["template_pseudo_beta_mask"] = beta_mask
    features.update(atom14_masks(aatype))
    return features


# ---------------------------------------------------------------------------------------------
# Per-sample transforms (one call per recycle)


def sample_msa(features: FeatureDict, num_clusters: int, order: np.ndarray) -> FeatureDict:
    """Keep rows ``order[:num_clusters]`` as cluster centres, the rest as ``extra_*`` rows.

    `order` is the query (row 0) followed by a permutation of the other rows.
    """
    out = dict(features)
    selected, rest = order[:num_clusters], order[num_clusters:]
    for name in MSA_FEATURES:
        if name in features:
            out["extra_" + name] = features[name][rest]
            out[name] = features[name][selected]
    return out


def random_msa_order(num_rows: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([[0], 1 + rng.permutation(num_rows - 1)]).astype(np.int64)


def mask_msa(features: FeatureDict, settings: PipelineSettings, rng: np.random.Generator) -> FeatureDict:
    """BERT-style masking: each position is replaced with probability `masked_msa_replace_fraction`.

    A replaced residue becomes a uniform amino acid, a draw from the MSA profile, itself, or the
    mask token (index 22), with probabilities 0.1/0.1/0.1/0.7.
    """
    out = dict(features)
    msa = features["msa"]
    uniform = np.array([0.05] * 20 + [0.0, 0.0], dtype=np.float32)
    probs = (
        np.float32(settings.masked_msa_uniform_prob) * uniform
        + np.float32(settings.masked_msa_profile_prob) * features["hhblits_profile"]
        + np.float32(settings.masked_msa_same_prob) * _one_hot(msa, 22)
    )
    mask_prob = (
        1.0
        - settings.masked_msa_profile_prob
        - settings.masked_msa_same_prob
        - settings.masked_msa_uniform_prob
    )
    probs = np.concatenate([probs, np.full(msa.shape + (1,), mask_prob, dtype=np.float32)], axis=-1)
    replace = rng.random(msa.shape) < settings.masked_msa_replace_fraction
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random(msa.shape)[..., None] * cumulative[..., -1:]
    sampled = np.minimum((cumulative <= draws).sum(axis=-1), 22).astype(np.int32)
    out["bert_mask"] = replace.astype(np.float32)
    out["true_msa"] = msa
    out["msa"] = np.where(replace, sampled, msa).astype(np.int32)
    return out


def nearest_cluster(features: FeatureDict, chunk_rows: int = 1024) -> np.ndarray:
    """Index of the cluster centre each extra row agrees with at most positions (amino acids and X only).

    Extra rows are one-hot encoded `chunk_rows` at a time, so memory stays bounded for deep MSAs.
    """
    extra = features["extra_msa"]
    centres = (features["msa_mask"][..., None] * _one_hot(features["msa"], 21)).reshape(
        features["msa"].shape[0], -1
    )
    assignment = np.zeros((extra.shape[0],), dtype=np.int32)
    for start in range(0, extra.shape[0], chunk_rows):
        stop = start + chunk_rows
        rows = features["extra_msa_mask"][start:stop, :, None] * _one_hot(extra[start:stop], 21)
        # Counts of agreeing positions are small integers, exact in float32 (and BLAS is fast there).
        agreement = rows.reshape(rows.shape[0], -1) @ centres.T
        assignment[start:stop] = np.argmax(agreement, axis=1)
    return assignment


def summarize_clusters(features: FeatureDict, assignment: np.ndarray) -> FeatureDict:
    """Cluster profile (23 classes) and mean deletions over each centre and the rows assigned to it."""
    out = dict(features)
    num_clusters, num_res = features["msa"].shape
    extra_mask = features["extra_msa_mask"]
    # Sums of 0/1 masks and integer deletion counts: exact in any order, so bincount matches
    # AlphaFold2's segment sums bit for bit.
    cell = assignment[:, None].astype(np.int64) * num_res + np.arange(num_res)
    size = num_clusters * num_res
    counts = (
        np.bincount(cell.ravel(), extra_mask.ravel(), size).astype(np.float32).reshape(num_clusters, num_res)
    )
    msa_sum = (
        np.bincount((cell * 23 + features["extra_msa"]).ravel(), extra_mask.ravel(), size * 23)
        .astype(np.float32)
        .reshape(num_clusters, num_res, 23)
    )
    msa_sum += _one_hot(features["msa"], 23)
    deletion_sum = (
        np.bincount(cell.ravel(), (extra_mask * features["extra_deletion_matrix"]).ravel(), size)
        .astype(np.float32)
        .reshape(num_clusters, num_res)
    )
    deletion_sum += features["deletion_matrix"]
    mask_counts = np.float32(1e-6) + features["msa_mask"] + counts
    out["cluster_profile"] = msa_sum / mask_counts[:, :, None]
    out["cluster_deletion_mean"] = deletion_sum / mask_counts
    return out


def crop_extra_msa(features: FeatureDict, keep: np.ndarray) -> FeatureDict:
    """Keep extra rows `keep` (a random subset of at most ``max_extra_msa`` rows)."""
    out = dict(features)
    for name in MSA_FEATURES:
        if "extra_" + name in features:
            out["extra_" + name] = features["extra_" + name][keep]
    return out


def _scaled_deletions(deletions: np.ndarray) -> np.ndarray:
    return np.arctan(deletions / np.float32(3.0)) * (2.0 / np.pi)


def make_msa_feat(features: FeatureDict) -> FeatureDict:
    """``msa_feat`` (49 channels), ``target_feat`` (22) and the extra rows' deletion features."""
    out = dict(features)
    has_break = np.clip(features["between_segment_residues"].astype(np.float32), 0, 1)
    out["target_feat"] = np.concatenate([has_break[:, None], _one_hot(features["aatype"], 21)], axis=-1)
    deletions = features["deletion_matrix"]
    parts = [
        _one_hot(features["msa"], 23),
        np.clip(deletions, 0.0, 1.0)[..., None],
        _scaled_deletions(deletions)[..., None],
    ]
    if "cluster_profile" in features:
        parts += [
            features["cluster_profile"],
            _scaled_deletions(features["cluster_deletion_mean"])[..., None],
        ]
    out["msa_feat"] = np.concatenate(parts, axis=-1)
    if "extra_deletion_matrix" in features:
        out["extra_has_deletion"] = np.clip(features["extra_deletion_matrix"], 0.0, 1.0)
        out["extra_deletion_value"] = _scaled_deletions(features["extra_deletion_matrix"])
    return out


def process_sample(
    target: FeatureDict,
    settings: PipelineSettings,
    rng: np.random.Generator,
    msa_order: np.ndarray | None = None,
    extra_keep: np.ndarray | None = None,
) -> FeatureDict:
    """One resampled set of features. `msa_order`/`extra_keep` override the random row choices."""
    num_rows = target["msa"].shape[0]
    if msa_order is None:
        msa_order = random_msa_order(num_rows, rng)
    features = sample_msa(target, settings.num_msa_clusters, msa_order)
    features = mask_msa(features, settings, rng)
    features = summarize_clusters(features, nearest_cluster(features))
    if extra_keep is None:
        num_extra = features["extra_msa"].shape[0]
        extra_keep = rng.permutation(num_extra)[: min(settings.max_extra_msa, num_extra)]
    features = crop_extra_msa(features, extra_keep)
    features = make_msa_feat(features)
    if settings.use_templates:
        for name in list(features):
            if name.startswith("template_"):
                features[name] = features[name][: settings.max_templates]
    features["random_crop_to_size_seed"] = rng.integers(-(2**31), 2**31 - 1, size=2, dtype=np.int32)
    selected = {name: np.asarray(features[name]) for name in OUTPUT_FEATURES if name in features}
    if settings.pad_to_fixed_size:
        selected = pad_to_fixed_size(selected, settings)
    return selected


def pad_to_fixed_size(features: FeatureDict, settings: PipelineSettings) -> FeatureDict:
    """Zero-pad MSA, extra-MSA and template axes to the preset's sizes (AlphaFold2's fixed shapes)."""
    sizes = {
        "msa": settings.num_msa_clusters,
        "extra": settings.max_extra_msa,
        "templates": settings.max_templates,
    }
    out = dict(features)
    for name, axes in _PAD_AXES.items():
        if name not in features:
            continue
        value = features[name]
        padding = [(0, 0)] * value.ndim
        for axis, kind in axes.items():
            padding[axis] = (0, sizes[kind] - value.shape[axis])
        out[name] = np.pad(value, padding)
    return out


def process_features(raw: Mapping[str, np.ndarray], settings: PipelineSettings, seed: int = 0) -> FeatureDict:
    """Processed features for one preset: every feature stacked over ``settings.num_samples`` samples."""
    target = prepare_target(raw, settings.use_templates)
    samples = []
    for index in range(settings.num_samples):
        rng = np.random.default_rng([int(seed) % 2**32, index])
        samples.append(process_sample(target, settings, rng))
    return {name: np.stack([s[name] for s in samples]) for name in samples[0]}
