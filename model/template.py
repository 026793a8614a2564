"""Template embedding (Jumper et al. 2021, Suppl. 1.7.1): template pair features through the
template pair stack, point-wise attention into the pair representation, and torsion-angle rows
appended to the MSA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.common import residue_constants as rc
from af2cpu.model.all_atom import NUM_TORSIONS, atom37_to_torsion_angles
from af2cpu.model.attention import Attention, mask_to_bias
from af2cpu.model.embedders import dgram_from_positions
from af2cpu.model.evoformer import (
    Transition,
    TriangleAttentionEndingNode,
    TriangleAttentionStartingNode,
    TriangleMultiplicationIncoming,
    TriangleMultiplicationOutgoing,
    _Chunked,
)
from af2cpu.model.presets import TemplateConfig
from af2cpu.model.primitives import LayerNorm, Linear

# Residue types of the template features: the 20 amino acids, X and the gap.
_NUM_RESIDUE_CLASSES = len(rc.restypes_with_x_and_gap)


class TemplatePairBlock(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack' lines 2-6: one block.

    Unlike the Evoformer's pair track, triangle attention comes before triangle multiplication.
    """

    def __init__(self, cfg: TemplateConfig):
        super().__init__()
        c_t, heads, tri = cfg.num_channel, cfg.triangle_num_head, cfg.num_intermediate_channel
        self.triangle_attention_starting_node = TriangleAttentionStartingNode(c_t, heads, c_t, c_t)
        self.triangle_attention_ending_node = TriangleAttentionEndingNode(c_t, heads, c_t, c_t)
        self.triangle_multiplication_outgoing = TriangleMultiplicationOutgoing(c_t, tri)
        self.triangle_multiplication_incoming = TriangleMultiplicationIncoming(c_t, tri)
        self.pair_transition = Transition(c_t, cfg.pair_transition_factor)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        pair = pair + self.triangle_attention_starting_node(pair, pair_mask)
        pair = pair + self.triangle_attention_ending_node(pair, pair_mask)
        pair = pair + self.triangle_multiplication_outgoing(pair, pair_mask)
        pair = pair + self.triangle_multiplication_incoming(pair, pair_mask)
        return pair + self.pair_transition(pair, pair_mask)


class TemplatePairStack(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack'."""

    def __init__(self, cfg: TemplateConfig):
        super().__init__()
        # The official files stack these blocks under haiku's layer_stack scope of this name.
        self.add_module("__layer_stack_no_state",
                        nn.ModuleList(TemplatePairBlock(cfg) for _ in range(cfg.num_block)))

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        for block in self.get_submodule("__layer_stack_no_state"):
            pair = block(pair, pair_mask)
        return pair


class SingleTemplateEmbedding(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 9-11: one template's pair features
    (Suppl. Table 1), embedded and run through the template pair stack."""

    def __init__(self, cfg: TemplateConfig):
        super().__init__()
        self.dgram_features = cfg.dgram_features
        self.embedding2d = Linear(cfg.num_pair_features, cfg.num_channel)
        self.template_pair_stack = TemplatePairStack(cfg)
        self.output_layer_norm = LayerNorm(cfg.num_channel)

    def forward(self, template_aatype, template_all_atom_positions, template_all_atom_masks,
                template_pseudo_beta, template_pseudo_beta_mask, mask_2d, dtype=torch.float32):
        """Features of one template (L, ...) and the residue pair mask (L, L) -> (L, L, c_t).

        The features are made in fp32; the pair stack runs in ``dtype`` (the trunk's)."""
        num_res = template_aatype.shape[0]
        pb_mask = template_pseudo_beta_mask.float()
        bins = self.dgram_features
        dgram = dgram_from_positions(template_pseudo_beta.float(), bins.num_bins, bins.min_bin, bins.max_bin)
        aatype = F.one_hot(template_aatype.long(), _NUM_RESIDUE_CLASSES).float()
        n, ca, c = (rc.atom_order[a] for a in ("N", "CA", "C"))
        backbone = template_all_atom_masks[..., n] * template_all_atom_masks[..., ca] * template_all_atom_masks[..., c]
        backbone_2d = (backbone[:, None] * backbone[None, :]).float()
        # DISCREPANCY: the released monomer models were trained with the inter-residue unit
        # vectors of Suppl. Table 1 set to zero (use_template_unit_vector=False); so are they here.
        unit_vector = backbone_2d.new_zeros(num_res, num_res, 3)
        act = torch.cat([
            dgram,
            (pb_mask[:, None] * pb_mask[None, :])[..., None],
            aatype[None, :, :].expand(num_res, -1, -1),
            aatype[:, None, :].expand(-1, num_res, -1),
            unit_vector,
            backbone_2d[..., None],
        ], dim=-1)
        act = self.embedding2d(act * backbone_2d[..., None]).to(dtype)
        act = self.template_pair_stack(act, mask_2d)
        return self.output_layer_norm(act)


class TemplateEmbedding(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 9-13 with Alg. 17
    'TemplatePointwiseAttention': each residue pair attends over its templates' embeddings."""

    def __init__(self, cfg: TemplateConfig, c_z: int):
        super().__init__()
        self.single_template_embedding = SingleTemplateEmbedding(cfg)
        self.attention = Attention(c_z, cfg.num_channel, c_z, cfg.attention_num_head, cfg.attention_key_dim,
                                   cfg.attention_value_dim, gating=False)

    def forward(self, pair: torch.Tensor, batch: dict, mask_2d: torch.Tensor) -> torch.Tensor:
        """The update of the pair representation (L, L, c_z) from the templates in ``batch``."""
        template_mask = batch["template_mask"].float()
        if not bool((template_mask > 0).any()):
            # No template at all: the update is exactly zero, so the pair stack is not run.
            return torch.zeros_like(pair)
        names = ("template_aatype", "template_all_atom_positions", "template_all_atom_masks",
                 "template_pseudo_beta", "template_pseudo_beta_mask")
        templates = torch.stack([
            self.single_template_embedding(*(batch[k][t] for k in names), mask_2d, pair.dtype)
            for t in range(template_mask.shape[0])
        ], dim=2)  # (L, L, T, c_t)
        num_res, c_z = pair.shape[0], pair.shape[-1]
        query = pair.reshape(num_res * num_res, 1, c_z)
        templates = templates.reshape(num_res * num_res, template_mask.shape[0], -1)
        bias = mask_to_bias(template_mask)[None, None, None, :]
        out = self.attention(query, templates, bias, None, self.options.chunks.template_attention)
        return out.reshape(num_res, num_res, c_z)


class TemplateTorsionEmbedder(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 7-8: template torsion angles (Suppl.
    Table 1, 57 features: residue type, the torsions' and the alternative torsions' sin and cos,
    the torsion mask) embedded as extra MSA rows of ``c_m`` channels."""

    haiku_transparent = True  # its layers live directly in the ``evoformer`` scope

    def __init__(self, c_m: int, placeholder_for_undefined: bool = False):
        super().__init__()
        self.placeholder_for_undefined = placeholder_for_undefined
        # The features concatenated in forward: one-hot type, two (sin, cos) per torsion twice, mask.
        num_features = _NUM_RESIDUE_CLASSES + 2 * (2 * NUM_TORSIONS) + NUM_TORSIONS
        self.template_single_embedding = Linear(num_features, c_m)
        self.template_projection = Linear(c_m, c_m)

    def forward(self, template_aatype, template_all_atom_positions, template_all_atom_masks):
        """-> MSA rows (T, L, c_m) and their mask (T, L) (the ψ torsion's mask, as AlphaFold2)."""
        num_templates, num_res = template_aatype.shape
        torsions = atom37_to_torsion_angles(template_aatype, template_all_atom_positions, template_all_atom_masks,
                                            placeholder_for_undefined=self.placeholder_for_undefined)
        feat = torch.cat([
            F.one_hot(template_aatype.long(), _NUM_RESIDUE_CLASSES).float(),
            torsions["torsion_angles_sin_cos"].reshape(num_templates, num_res, 2 * NUM_TORSIONS),
            torsions["alt_torsion_angles_sin_cos"].reshape(num_templates, num_res, 2 * NUM_TORSIONS),
            torsions["torsion_angles_mask"],
        ], dim=-1)
        rows = self.template_projection(torch.relu(self.template_single_embedding(feat)))
        return rows, torsions["torsion_angles_mask"][..., 2]
