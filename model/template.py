"""Template embedding (Jumper et al. 2021, Suppl. 1.7.1): template pair features through the
template pair stack, point-wise attention into the pair representation, and torsion-angle rows
appended to the MSA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.common import residue_constants as rc
from af2cpu.model.all_atom import atom37_to_torsion_angles
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
from af2cpu.model.primitives import LayerNorm, Linear


class TemplatePairBlock(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack' lines 2-6: one block.

    Unlike the Evoformer's pair track, triangle attention comes before triangle multiplication.
    """

    def __init__(self, c_t: int = 64):
        super().__init__()
        self.triangle_attention_starting_node = TriangleAttentionStartingNode(c_t, 4, c_t, c_t)
        self.triangle_attention_ending_node = TriangleAttentionEndingNode(c_t, 4, c_t, c_t)
        self.triangle_multiplication_outgoing = TriangleMultiplicationOutgoing(c_t, c_t)
        self.triangle_multiplication_incoming = TriangleMultiplicationIncoming(c_t, c_t)
        self.pair_transition = Transition(c_t, factor=2)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        pair = pair + self.triangle_attention_starting_node(pair, pair_mask)
        pair = pair + self.triangle_attention_ending_node(pair, pair_mask)
        pair = pair + self.triangle_multiplication_outgoing(pair, pair_mask)
        pair = pair + self.triangle_multiplication_incoming(pair, pair_mask)
        return pair + self.pair_transition(pair, pair_mask)


class TemplatePairStack(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack'."""

    def __init__(self, c_t: int = 64, num_block: int = 2):
        super().__init__()
        # The official files stack these blocks under haiku's layer_stack scope of this name.
        self.add_module("__layer_stack_no_state", nn.ModuleList(TemplatePairBlock(c_t) for _ in range(num_block)))

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        for block in self.get_submodule("__layer_stack_no_state"):
            pair = block(pair, pair_mask)
        return pair


class SingleTemplateEmbedding(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 9-11: one template's pair features
    (Suppl. Table 1), embedded and run through the template pair stack."""

    def __init__(self, c_t: int = 64, num_block: int = 2):
        super().__init__()
        self.embedding2d = Linear(39 + 1 + 22 + 22 + 3 + 1, c_t)
        self.template_pair_stack = TemplatePairStack(c_t, num_block)
        self.output_layer_norm = LayerNorm(c_t)

    def forward(self, template_aatype, template_all_atom_positions, template_all_atom_masks,
                template_pseudo_beta, template_pseudo_beta_mask, mask_2d, dtype=torch.float32):
        """Features of one template (L, ...) and the residue pair mask (L, L) -> (L, L, c_t).

        The features are made in fp32; the pair stack runs in ``dtype`` (the trunk's)."""
        num_res = template_aatype.shape[0]
        pb_mask = template_pseudo_beta_mask.float()
        dgram = dgram_from_positions(template_pseudo_beta.float(), 39, 3.25, 50.75)
        aatype = F.one_hot(template_aatype.long(), 22).float()
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

    def __init__(self, c_z: int = 128, c_t: int = 64, num_block: int = 2):
        super().__init__()
        self.single_template_embedding = SingleTemplateEmbedding(c_t, num_block)
        self.attention = Attention(c_z, c_t, c_z, num_head=4, key_dim=64, value_dim=64, gating=False)

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
    Table 1, 57 features) embedded as extra MSA rows."""

    haiku_transparent = True  # its layers live directly in the ``evoformer`` scope

    def __init__(self, c_m: int = 256, placeholder_for_undefined: bool = False):
        super().__init__()
        self.placeholder_for_undefined = placeholder_for_undefined
        self.template_single_embedding = Linear(22 + 14 + 14 + 7, c_m)
        self.template_projection = Linear(c_m, c_m)

    def forward(self, template_aatype, template_all_atom_positions, template_all_atom_masks):
        """-> MSA rows (T, L, c_m) and their mask (T, L) (the ψ torsion's mask, as AlphaFold2)."""
        num_templates, num_res = template_aatype.shape
        torsions = atom37_to_torsion_angles(template_aatype, template_all_atom_positions, template_all_atom_masks,
                                            placeholder_for_undefined=self.placeholder_for_undefined)
        feat = torch.cat([
            F.one_hot(template_aatype.long(), 22).float(),
            torsions["torsion_angles_sin_cos"].reshape(num_templates, num_res, 14),
            torsions["alt_torsion_angles_sin_cos"].reshape(num_templates, num_res, 14),
            torsions["torsion_angles_mask"],
        ], dim=-1)
        rows = self.template_projection(torch.relu(self.template_single_embedding(feat)))
        return rows, torsions["torsion_angles_mask"][..., 2]
