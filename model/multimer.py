"""AlphaFold-Multimer's input side (Evans et al. 2022, Suppl. 2.1): from DeepMind's multimer example
(the dict ``pipeline_multimer.DataPipeline.process`` returns) to one pass's network features.

DeepMind moved the MSA sampling into the multimer network: each pass splits the MSA into the
sampled rows and the extra MSA, gives every sampled row the profile of the extra rows nearest to it
(``nearest_neighbor_clusters``), and builds ``msa_feat`` (49) and the extra MSA's features (25)
from them (``create_msa_feat``, ``create_extra_msa_feature``). :func:`pass_features` does that and
names the results as the monomer's processed features, so the trunk (``af2cpu.model.alphafold``)
reads both models' features alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from af2cpu.model.all_atom import make_atom14_masks
from af2cpu.model.multimer_sampling import (
    MULTIMER_SHAPES,
    OPTIONAL_SHAPES,
    make_masked_msa,
    make_msa_profile,
    sample_msa,
)
from af2cpu.model.presets import Preset

# One-hot classes of the MSA: 20 amino acids, X, gap, and the BERT mask token.
_MSA_CLASSES = 23
# The multimer's target_feat: the 20 amino acids and X.
_TARGET_CLASSES = 21

_INT_FEATURES = {"aatype", "residue_index", "asym_id", "entity_id", "sym_id", "msa", "template_aatype"}


def to_tensors(features: dict) -> dict[str, torch.Tensor]:
    """The example's arrays as tensors: integer features int64, the rest float32."""
    batch = {}
    for name in (*MULTIMER_SHAPES, *OPTIONAL_SHAPES):
        if name in features:
            value = np.asarray(features[name])
            batch[name] = torch.from_numpy(np.ascontiguousarray(
                value.astype(np.int64 if name in _INT_FEATURES else np.float32)))
    return batch


def nearest_neighbor_clusters(batch: dict[str, torch.Tensor], gap_agreement_weight: float = 0.0):
    """Evans et al. (2022) Suppl. 2.1, DeepMind's ``nearest_neighbor_clusters``: each sampled MSA row's
    profile and mean deletions over itself and the extra rows assigned to it.

    An extra row is assigned (softly, softmax of 1e3 x agreement over the sampled rows) to the sampled
    rows it agrees with most, counting positions where both have the same amino acid or X (gaps weigh
    ``gap_agreement_weight``, the mask token nothing). The assignment is weighted by the number of
    positions unmasked in both rows, as DeepMind's code does.
    Returns ``cluster_profile`` (S, L, 23) and ``cluster_deletion_mean`` (S, L).
    """
    weights = torch.tensor([1.0] * 21 + [gap_agreement_weight, 0.0])
    msa_mask, extra_mask = batch["msa_mask"], batch["extra_msa_mask"]
    msa_one_hot = msa_mask[..., None] * F.one_hot(batch["msa"], _MSA_CLASSES).float()
    extra_one_hot = extra_mask[..., None] * F.one_hot(batch["extra_msa"], _MSA_CLASSES).float()
    num_msa, num_res = msa_mask.shape
    # (extra, sampled) agreement: one GEMM over positions x classes.
    agreement = extra_one_hot.reshape(-1, num_res * _MSA_CLASSES) @ (
        weights * msa_one_hot).reshape(num_msa, -1).t()
    # Each extra row spreads over the sampled rows; then weighted by the positions both have.
    assignment = torch.softmax(1e3 * agreement, dim=1).t() * (msa_mask @ extra_mask.t())  # (sampled, extra)
    count = assignment.sum(-1) + 1.0  # the row itself counts too
    profile_sum = (assignment @ extra_one_hot.reshape(-1, num_res * _MSA_CLASSES)).reshape(msa_one_hot.shape)
    profile = (profile_sum + msa_one_hot) / count[:, None, None]
    deletion_sum = assignment @ (extra_mask * batch["extra_deletion_matrix"]) + batch["deletion_matrix"]
    return profile, deletion_sum / count[:, None]


def _deletion_value(deletions: torch.Tensor) -> torch.Tensor:
    return torch.atan(deletions / 3.0) * (2.0 / math.pi)


def create_msa_feat(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """DeepMind's multimer ``create_msa_feat``: (S, L, 49) = one-hot MSA (23) | has deletion |
    deletion value | cluster profile (23) | cluster deletion value."""
    deletions = batch["deletion_matrix"]
    return torch.cat([F.one_hot(batch["msa"], _MSA_CLASSES).float(), deletions.clamp(0.0, 1.0)[..., None],
                      _deletion_value(deletions)[..., None], batch["cluster_profile"],
                      _deletion_value(batch["cluster_deletion_mean"])[..., None]], dim=-1)


def pass_features(preset: Preset, batch: dict[str, torch.Tensor],
                  generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One pass's network features from the example's tensors (:func:`to_tensors`), with the names of
    the monomer's processed features where they mean the same (``target_feat``, ``msa_feat``,
    ``extra_msa``, ``extra_has_deletion``, ...). The pass samples its MSA rows and masks them BERT-style
    (the preset's ``masked_msa_replace_fraction``) with ``generator`` (None: file order, no masking)."""
    # DeepMind's EmbeddingsAndEvoformer takes the profile of the whole MSA, then samples.
    sampled = sample_msa(dict(batch, msa_profile=make_msa_profile(batch)), preset.num_msa_clusters, generator)
    sampled = make_masked_msa(sampled, preset.masked_msa_replace_fraction, generator)
    profile, deletion_mean = nearest_neighbor_clusters(sampled)
    sampled["cluster_profile"], sampled["cluster_deletion_mean"] = profile, deletion_mean
    out = {name: batch[name] for name in ("aatype", "residue_index", "seq_mask", "asym_id", "entity_id", "sym_id",
                                          "template_aatype", "template_all_atom_positions")}
    out["template_all_atom_masks"] = batch["template_all_atom_mask"]
    # DeepMind's one_hot(aatype, 21): a gap (21) is the zero vector, not X.
    out["target_feat"] = F.one_hot(batch["aatype"].clamp(max=_TARGET_CLASSES), _TARGET_CLASSES + 1)[:, :_TARGET_CLASSES].float()
    out["msa_feat"] = create_msa_feat(sampled)
    out["msa_mask"] = sampled["msa_mask"]
    num_extra = preset.max_extra_msa
    extra_deletions = sampled["extra_deletion_matrix"][:num_extra]
    out["extra_msa"] = sampled["extra_msa"][:num_extra]
    out["extra_msa_mask"] = sampled["extra_msa_mask"][:num_extra]
    out["extra_has_deletion"] = extra_deletions.clamp(0.0, 1.0)
    out["extra_deletion_value"] = _deletion_value(extra_deletions)
    # The structure module's atom maps; DeepMind's multimer masks them with seq_mask.
    atoms = make_atom14_masks(batch["aatype"].numpy())
    seq_mask = batch["seq_mask"].numpy()[:, None]
    out["atom14_atom_exists"] = torch.from_numpy((atoms["atom14_atom_exists"] * seq_mask).astype(np.float32))
    out["atom37_atom_exists"] = torch.from_numpy((atoms["atom37_atom_exists"] * seq_mask).astype(np.float32))
    out["residx_atom37_to_atom14"] = torch.from_numpy(atoms["residx_atom37_to_atom14"].astype(np.int64))
    return out
