"""Input embeddings (Jumper et al. 2021, Suppl. 1.5): target/MSA features, relative positions,
recycled state, extra MSA.

These modules are ``haiku_transparent``: their parameters sit directly in the ``evoformer`` scope
of the official files (``evoformer/preprocess_1d``, ``evoformer/prev_pair_norm``, ...), so the
parameter mapping leaves their attribute name out (see :mod:`af2cpu.model.params`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.model.all_atom import pseudo_beta
from af2cpu.model.presets import DistanceBins
from af2cpu.model.primitives import LayerNorm, Linear


def dgram_from_positions(positions: torch.Tensor, num_bins: int, min_bin: float, max_bin: float,
                         rows: slice = slice(None)) -> torch.Tensor:
    """One-hot distance bins (L, L, num_bins); the last bin catches everything beyond ``max_bin``.
    ``rows`` selects the first axis: the bins of those residues against every residue."""
    lower = torch.linspace(min_bin, max_bin, num_bins, dtype=torch.float32) ** 2
    upper = torch.cat([lower[1:], lower.new_tensor([1e8])])
    dist2 = ((positions[..., rows, None, :] - positions[..., None, :, :]) ** 2).sum(-1, keepdim=True)
    return ((dist2 > lower) & (dist2 < upper)).float()


class InputEmbedder(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 3 'InputEmbedder' (lines 1-4; line 5 is Alg. 4)."""

    haiku_transparent = True

    def __init__(self, target_feat_dim: int, msa_feat_dim: int, c_m: int, c_z: int):
        super().__init__()
        self.preprocess_1d = Linear(target_feat_dim, c_m)
        self.preprocess_msa = Linear(msa_feat_dim, c_m)
        self.left_single = Linear(target_feat_dim, c_z)
        self.right_single = Linear(target_feat_dim, c_z)

    def forward(self, target_feat: torch.Tensor, msa_feat: torch.Tensor):
        """target_feat (L, target_feat_dim), msa_feat (S, L, msa_feat_dim) -> msa (S, L, c_m),
        pair (L, L, c_z)."""
        return self.msa_rows(target_feat, msa_feat), self.pair_rows(target_feat)

    def msa_rows(self, target_feat: torch.Tensor, msa_feat: torch.Tensor) -> torch.Tensor:
        """The MSA embedding of the rows in ``msa_feat`` (a slice of the MSA's rows is fine)."""
        return self.preprocess_1d(target_feat)[None] + self.preprocess_msa(msa_feat)

    def pair_rows(self, target_feat: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The pair embedding's rows ``rows``: (rows, L, c_z)."""
        return self.left_single(target_feat[rows])[:, None] + self.right_single(target_feat)[None]


class RelativePositionEncoding(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 4 'relpos': clipped residue offsets, one-hot, linear."""

    haiku_transparent = True

    def __init__(self, max_relative_feature: int, c_z: int):
        super().__init__()
        self.max_relative_feature = max_relative_feature
        # DeepMind's spelling "activiations" is part of the official parameter names.
        self.pair_activiations = Linear(2 * max_relative_feature + 1, c_z)

    def forward(self, residue_index: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The encoding of pair rows ``rows``: (rows, L, c_z)."""
        k = self.max_relative_feature
        offset = residue_index[rows, None].long() - residue_index[None, :].long()
        # The linear layer of a one-hot vector is one row of its weights plus the bias: the same
        # numbers, without the (L, L, 65) one-hot tensor.
        linear = self.pair_activiations
        return linear.weights[torch.clamp(offset + k, 0, 2 * k)] + linear.bias


class ChainRelativePositionEncoding(nn.Module):
    """Evans et al. (2022) Suppl. 2.1 'relative position encoding' (DeepMind's multimer
    ``_relative_encoding`` with ``use_chain_relative``): the clipped residue offset within a chain
    (one-hot 2k+1, plus a bin for "other chain"), the same-entity flag, and the clipped offset of
    the chains' symmetry ids within an entity (one-hot 2c+1, plus a bin for "other entity").
    73 features for k=32, c=2, through one linear layer."""

    def __init__(self, max_relative_idx: int, max_relative_chain: int, c_z: int):
        super().__init__()
        self.max_relative_idx, self.max_relative_chain = max_relative_idx, max_relative_chain
        self.position_activations = Linear(2 * max_relative_idx + 2 + 1 + 2 * max_relative_chain + 2, c_z)

    def forward(self, residue_index, asym_id, entity_id, sym_id, rows: slice = slice(None)) -> torch.Tensor:
        """The encoding of pair rows ``rows``: (rows, L, c_z)."""
        k, c = self.max_relative_idx, self.max_relative_chain
        same_chain = asym_id[rows, None] == asym_id[None, :]
        same_entity = entity_id[rows, None] == entity_id[None, :]
        offset = torch.clamp(residue_index[rows, None].long() - residue_index[None, :].long() + k, 0, 2 * k)
        offset = torch.where(same_chain, offset, torch.full_like(offset, 2 * k + 1))
        rel_sym = torch.clamp(sym_id[rows, None].long() - sym_id[None, :].long() + c, 0, 2 * c)
        rel_sym = torch.where(same_entity, rel_sym, torch.full_like(rel_sym, 2 * c + 1))
        # A linear layer of one-hot blocks: rows of its weights, plus the bias.
        w = self.position_activations.weights
        return (w[offset] + same_entity[..., None].to(w.dtype) * w[2 * k + 2]
                + w[2 * k + 3 + rel_sym] + self.position_activations.bias)


class RecyclingEmbedder(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 32 'RecyclingEmbedder'."""

    haiku_transparent = True

    def __init__(self, c_m: int, c_z: int, prev_pos: DistanceBins):
        super().__init__()
        self.bins = (prev_pos.num_bins, prev_pos.min_bin, prev_pos.max_bin)
        self.prev_pos_linear = Linear(prev_pos.num_bins, c_z)
        self.prev_msa_first_row_norm = LayerNorm(c_m)
        self.prev_pair_norm = LayerNorm(c_z)

    def forward(self, aatype, prev_pos, prev_msa_first_row, prev_pair):
        """Updates for the first MSA row (L, c_m) and the pair (L, L, c_z) from the previous pass."""
        # DISCREPANCY: the lower bin edges run from 3.25 to 20.75 Å, as the released weights expect;
        # the paper's Alg. 32 lists 3 3/8 to 21 3/8 Å.
        return self.prev_msa_first_row_norm(prev_msa_first_row), self.pair_rows(aatype, prev_pos, prev_pair)

    def pair_rows(self, aatype, prev_pos, prev_pair, rows: slice = slice(None)) -> torch.Tensor:
        """The pair update's rows ``rows``: (rows, L, c_z)."""
        dgram = dgram_from_positions(pseudo_beta(aatype, prev_pos), *self.bins, rows=rows)
        # The recycled pair may be kept in bf16 (AlphaFold.predict); its layer norm runs in fp32.
        return self.prev_pos_linear(dgram) + self.prev_pair_norm(prev_pair[rows].float())


class ExtraMsaEmbedder(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 14-15: extra-MSA features to ``c_e`` channels."""

    haiku_transparent = True

    def __init__(self, extra_msa_feat_dim: int, c_e: int):
        super().__init__()
        # The features are the one-hot residue class, has_deletion and deletion_value.
        self.num_msa_classes = extra_msa_feat_dim - 2
        self.extra_msa_activations = Linear(extra_msa_feat_dim, c_e)

    def forward(self, extra_msa, extra_has_deletion, extra_deletion_value):
        """extra_msa (S, L) int, deletion features (S, L) -> (S, L, c_e)."""
        feat = torch.cat([F.one_hot(extra_msa.long(), self.num_msa_classes).float(),
                          extra_has_deletion[..., None].float(),
                          extra_deletion_value[..., None].float()], dim=-1)
        return self.extra_msa_activations(feat)
