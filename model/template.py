"""Template embedding (Jumper et al. 2021, Suppl. 1.7.1): template pair features through the
template pair stack, point-wise attention into the pair representation, and torsion-angle rows
appended to the MSA; and AlphaFold-Multimer's version of each (Evans et al. 2022, Suppl. 2.1:
``MultimerTemplateEmbedding``, ``TemplateChiEmbedder``), whose behaviour is that of DeepMind's
``modules_multimer``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.common import residue_constants as rc
from af2cpu.model.all_atom import NUM_TORSIONS, _chi_atom_indices, atom37_to_torsion_angles, pseudo_beta
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
from af2cpu.model.geometry import Rigid
from af2cpu.model.options import chunk_slices, embedding_step_rows, embedding_steps
from af2cpu.model.presets import TemplateConfig
from af2cpu.model.primitives import LayerNorm, Linear, add_in_place, kept_weight, linear_layout, weight_as

# Residue types of the template features: the 20 amino acids, X and the gap.
_NUM_RESIDUE_CLASSES = len(rc.restypes_with_x_and_gap)


class TemplatePairBlock(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack' lines 2-6: one block.

    Unlike the Evoformer's pair track, triangle attention comes before triangle multiplication;
    in the multimer's blocks (``cfg.multimer``, DeepMind's ``TemplateEmbeddingIteration``) the
    triangle multiplications come first, as in the Evoformer. The residual updates are added into
    ``pair`` in place: the caller hands over its tensor (and gets it back).
    """

    def __init__(self, cfg: TemplateConfig):
        super().__init__()
        c_t, heads, tri = cfg.num_channel, cfg.triangle_num_head, cfg.num_intermediate_channel
        self.multiplication_first = cfg.multimer
        self.triangle_attention_starting_node = TriangleAttentionStartingNode(c_t, heads, c_t, c_t)
        self.triangle_attention_ending_node = TriangleAttentionEndingNode(c_t, heads, c_t, c_t)
        fused = cfg.fuse_projection_weights
        self.triangle_multiplication_outgoing = TriangleMultiplicationOutgoing(c_t, tri, fused)
        self.triangle_multiplication_incoming = TriangleMultiplicationIncoming(c_t, tri, fused)
        self.pair_transition = Transition(c_t, cfg.pair_transition_factor)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        attention = (self.triangle_attention_starting_node, self.triangle_attention_ending_node)
        multiplication = (self.triangle_multiplication_outgoing, self.triangle_multiplication_incoming)
        # Each module adds its update into the pair a block of rows (columns) at a time: never whole.
        for module in (multiplication + attention if self.multiplication_first else attention + multiplication):
            pair = module(pair, pair_mask, inplace=True)
        return self.pair_transition(pair, pair_mask, inplace=True)


class TemplatePairStack(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 16 'TemplatePairStack' (updates ``pair`` in place)."""

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
        """Features of one template (L, ...) and the residue pair mask (L, L) -> (L, L, c_t)."""
        return self.output_layer_norm(self.stacked(template_aatype, template_all_atom_positions,
                                                   template_all_atom_masks, template_pseudo_beta,
                                                   template_pseudo_beta_mask, mask_2d, dtype))

    def stacked(self, template_aatype, template_all_atom_positions, template_all_atom_masks,
                template_pseudo_beta, template_pseudo_beta_mask, mask_2d, dtype=torch.float32):
        """The template's embedding after the pair stack, before the output layer norm: (L, L, c_t).

        The features are made in fp32 a block of rows at a time (the (L, L, F_t) features never
        exist whole), each block projected to c_t and written into the ``dtype`` (the trunk's)
        activation the pair stack then updates in place."""
        num_res = template_aatype.shape[0]
        pb_mask = template_pseudo_beta_mask.float()
        pb = template_pseudo_beta.float()
        bins = self.dgram_features
        aatype = F.one_hot(template_aatype.long(), _NUM_RESIDUE_CLASSES).float()
        n, ca, c = (rc.atom_order[a] for a in ("N", "CA", "C"))
        backbone = (template_all_atom_masks[..., n] * template_all_atom_masks[..., ca]
                    * template_all_atom_masks[..., c]).float()
        linear = self.embedding2d
        act = pb.new_empty((num_res, num_res, linear.weights.shape[1]), dtype=dtype)
        for s in embedding_steps(num_res, num_res * linear.weights.shape[0] * 4):
            rows = s.stop - s.start
            backbone_2d = backbone[s, None] * backbone[None, :]
            # DISCREPANCY: the released monomer models were trained with the inter-residue unit
            # vectors of Suppl. Table 1 set to zero (use_template_unit_vector=False); so are they here.
            feat = torch.cat([
                dgram_from_positions(pb, bins.num_bins, bins.min_bin, bins.max_bin, rows=s),
                (pb_mask[s, None] * pb_mask[None, :])[..., None],
                aatype[None, :, :].expand(rows, -1, -1),
                aatype[s, None, :].expand(-1, num_res, -1),
                backbone_2d.new_zeros(rows, num_res, 3),
                backbone_2d[..., None],
            ], dim=-1).mul_(backbone_2d[..., None])
            if dtype == torch.float32:
                linear(feat.view(-1, feat.shape[-1]), out=act[s].view(-1, act.shape[-1]))
            else:
                act[s] = linear(feat)
        return self.template_pair_stack(act, mask_2d)


class TemplateEmbedding(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 9-13 with Alg. 17
    'TemplatePointwiseAttention': each residue pair attends over its templates' embeddings.

    The templates are combined one at a time, by an online softmax over templates: each template
    is embedded and run through its pair stack, then folded into a running maximum, denominator
    and weighted sum of values (fp32, (L, L, H) and (L, L, H, c_v)) a block of pair rows at a
    time, and dropped; only one template's embedding exists at any time.
    """

    def __init__(self, cfg: TemplateConfig, c_z: int):
        super().__init__()
        self.single_template_embedding = SingleTemplateEmbedding(cfg)
        self.attention = Attention(c_z, cfg.num_channel, c_z, cfg.attention_num_head, cfg.attention_key_dim,
                                   cfg.attention_value_dim, gating=False)

    def forward(self, pair: torch.Tensor, batch: dict, mask_2d: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The update of the pair representation (L, L, c_z) from the templates in ``batch``, added
        into ``out`` and returned: ``out=pair`` updates the pair in place (its rows are written only
        after every template has read them); by default the update alone, in a new tensor."""
        if out is None:
            out = torch.zeros_like(pair)
        template_mask = batch["template_mask"].float()
        # A slot whose template_mask is 0 has the bias MASK_BIAS: next to any real template its
        # softmax weight is exactly 0 in fp32, so it is skipped (pair stack and all). Without a real
        # template the update is exactly zero.
        real = [t for t in range(template_mask.shape[0]) if float(template_mask[t]) != 0.0]
        if not real:
            return out
        names = ("template_aatype", "template_all_atom_positions", "template_all_atom_masks",
                 "template_pseudo_beta", "template_pseudo_beta_mask")
        bias = mask_to_bias(template_mask)
        softmax = None
        for t in real:
            template = self.single_template_embedding.stacked(*(batch[k][t] for k in names), mask_2d, pair.dtype)
            if softmax is None:
                softmax = _TemplateSoftmax(self.attention, pair.shape[0])
            for s in self._row_blocks(pair.shape[0]):
                softmax.fold(s, pair[s], self.single_template_embedding.output_layer_norm(template[s]),
                             float(bias[t]), first=t == real[0])
            del template
        for s in self._row_blocks(pair.shape[0]):
            add_in_place(out[s], softmax.update(s, pair.dtype))
        return out

    def _row_blocks(self, num_res: int):
        """Blocks of pair rows for the point-wise attention: a few MiB of fp32 intermediates each,
        at most ``options.chunks.template_attention`` residue pairs."""
        a = self.attention
        pair_bytes = 4 * (a.query_w.shape[0] + a.key_w.shape[0] + 3 * a.num_head * (a.key_dim + a.value_dim))
        rows = embedding_step_rows(num_res * pair_bytes)
        chunk = self.options.chunks.template_attention
        if chunk is not None:
            rows = min(rows, max(1, chunk // num_res))
        return chunk_slices(num_res, rows)


class _TemplateSoftmax:
    """The online softmax of Alg. 17 over templates, for every residue pair: the running maximum of
    the logits, the running denominator and the running weighted sum of the values, fp32."""

    def __init__(self, attention: Attention, num_res: int):
        self.attention = attention
        heads = attention.num_head
        self.max = torch.empty((num_res, num_res, heads))
        self.denominator = torch.empty((num_res, num_res, heads))
        self.weighted = torch.empty((num_res, num_res, heads, attention.value_dim))

    def fold(self, rows: slice, query: torch.Tensor, template: torch.Tensor, bias: float, first: bool) -> None:
        """Fold one template's block of pair rows (its layer-normed embedding) into the state;
        ``first``: the first template, which starts it."""
        a = self.attention
        heads, ck, cv = a.num_head, a.key_dim, a.value_dim
        num_rows, num_res = query.shape[:2]
        dtype = query.dtype
        # The projections in the trunk's dtype, as the attention kernel computes them.
        c_q, c_t = query.shape[-1], template.shape[-1]
        q = (query.reshape(-1, c_q) @ weight_as(a, "query_w", dtype, (c_q, heads * ck))).float()
        w_kv = kept_weight(a, ("kv", dtype), dtype, (a.key_w, a.value_w), lambda: linear_layout(
            torch.cat([a.key_w.reshape(c_t, -1), a.value_w.reshape(c_t, -1)], dim=1).to(dtype)))
        kv = (template.reshape(-1, c_t) @ w_kv).float()
        k = kv[:, :heads * ck].view(num_rows, num_res, heads, ck)
        v = kv[:, heads * ck:].view(num_rows, num_res, heads, cv)
        logits = (q.view(num_rows, num_res, heads, ck) * k).sum(-1).mul_(ck**-0.5).add_(bias)
        m, d, w = self.max[rows], self.denominator[rows], self.weighted[rows]
        if first:
            m.copy_(logits)
            d.fill_(1.0)
            w.copy_(v)
            return
        new_max = torch.maximum(m, logits)
        scale = (m - new_max).exp_()
        p = (logits - new_max).exp_()
        d.mul_(scale).add_(p)
        w.mul_(scale[..., None]).add_(v.mul_(p[..., None]))
        m.copy_(new_max)

    def update(self, rows: slice, dtype: torch.dtype) -> torch.Tensor:
        """The attention's output for a block of pair rows: (rows, L, c_z) in ``dtype``."""
        a = self.attention
        w = self.weighted[rows]
        values = (w / self.denominator[rows][..., None]).to(dtype).reshape(-1, a.num_head * a.value_dim)
        out = torch.addmm(weight_as(a, "output_b", dtype), values, a.output_matrix(dtype))
        return out.view(*w.shape[:2], -1)


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


def _backbone_frames(positions: torch.Tensor, mask: torch.Tensor) -> tuple[Rigid, torch.Tensor]:
    """Each residue's backbone frame (origin Cα, x axis towards C, N in the xy plane) and its mask
    (N, Cα and C present), as DeepMind's ``make_backbone_affine`` builds it for the multimer."""
    n, ca, c = (rc.atom_order[a] for a in ("N", "CA", "C"))
    origin = positions[..., ca, :]
    e0 = _normalized(positions[..., c, :] - origin)
    v1 = positions[..., n, :] - origin
    e1 = _normalized(v1 - (v1 * e0).sum(-1, keepdim=True) * e0)
    rot = torch.stack([e0, e1, torch.cross(e0, e1, dim=-1)], dim=-1)
    return Rigid(rot, origin), mask[..., n] * mask[..., ca] * mask[..., c]


def _normalized(vec: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """v / max(|v|, eps): the multimer geometry's normalisation (zero stays zero)."""
    return vec / torch.sqrt(torch.clamp((vec * vec).sum(-1, keepdim=True), min=eps * eps))


class MultimerSingleTemplateEmbedding(nn.Module):
    """Evans et al. (2022) Suppl. 2.1, DeepMind's ``modules_multimer.SingleTemplateEmbedding``: one
    template's pair features, each through its own input layer (``template_pair_embedding_0..8``),
    summed, then the template pair stack and a layer norm.

    The features are those of Jumper et al. (2021) Suppl. Table 1 with the inter-residue unit
    vectors, plus the layer-normed query pair representation; the distance and frame features
    are restricted to residue pairs of one chain (``multichain_mask_2d``).
    """

    def __init__(self, cfg: TemplateConfig, c_z: int):
        super().__init__()
        c_t = cfg.num_channel
        self.dgram_features = cfg.dgram_features
        self.query_embedding_norm = LayerNorm(c_z)
        # The inputs in DeepMind's order: distogram, its mask, residue type of j, of i, unit vector
        # x, y, z, backbone mask, query pair; scalar features have scalar-input layers.
        widths = (cfg.dgram_features.num_bins, (), _NUM_RESIDUE_CLASSES, _NUM_RESIDUE_CLASSES, (), (), (), (), c_z)
        for i, width in enumerate(widths):
            self.add_module(f"template_pair_embedding_{i}", Linear(width, c_t))
        self.template_embedding_iteration = nn.ModuleList(TemplatePairBlock(cfg) for _ in range(cfg.num_block))
        self.output_layer_norm = LayerNorm(c_t)

    def forward(self, query: torch.Tensor, template_aatype, template_all_atom_positions, template_all_atom_mask,
                padding_mask_2d: torch.Tensor, multichain_mask_2d: torch.Tensor) -> torch.Tensor:
        """query (L, L, c_z), one template's features (L, ...), masks (L, L) -> (L, L, c_t).

        The fp32 features (with the query's layer norm) and the input layers' sum are made a block
        of rows at a time, each block cast into the template's activation in the query's dtype."""
        positions = template_all_atom_positions.float()
        atom_mask = template_all_atom_mask.float()
        bins = self.dgram_features
        beta, beta_mask = pseudo_beta(template_aatype, positions, atom_mask)
        aatype = F.one_hot(template_aatype.long(), _NUM_RESIDUE_CLASSES).float()
        frames, backbone_mask = _backbone_frames(positions, atom_mask)
        num_res = aatype.shape[0]
        layers = [getattr(self, f"template_pair_embedding_{i}") for i in range(9)]
        act = query.new_empty((num_res, num_res, layers[0].weights.shape[-1]))
        row_bytes = num_res * 4 * (bins.num_bins + 2 * _NUM_RESIDUE_CLASSES + 2 * query.shape[-1])
        for s in embedding_steps(num_res, row_bytes):
            rows = s.stop - s.start
            beta_mask_2d = beta_mask[s, None] * beta_mask[None, :] * multichain_mask_2d[s]
            dgram = dgram_from_positions(beta, bins.num_bins, bins.min_bin, bins.max_bin, rows=s) * beta_mask_2d[..., None]
            # Each residue j's Cα seen from residue i's frame, as a unit vector.
            # DISCREPANCY: for j = i this is 0 here (R^T (x_i - t_i), exactly); DeepMind's jit-compiled
            # code computes R^T x_i - R^T t_i, whose rounding noise its 1e-6 norm floor can turn into a
            # random direction. The self-pair's direction is undefined either way.
            local = frames[s].unsqueeze(1).invert_apply(frames.trans[None, :, :])
            backbone_mask_2d = backbone_mask[s, None] * backbone_mask[None, :] * multichain_mask_2d[s]
            unit = _normalized(local) * backbone_mask_2d[..., None]
            inputs = (dgram, beta_mask_2d, aatype[None].expand(rows, -1, -1), aatype[s, None].expand(-1, num_res, -1),
                      unit[..., 0], unit[..., 1], unit[..., 2], backbone_mask_2d,
                      self.query_embedding_norm(query[s].float()))
            act[s] = sum(layer(x) for layer, x in zip(layers, inputs))
        for block in self.template_embedding_iteration:
            act = block(act, padding_mask_2d.to(act.dtype))
        return self.output_layer_norm(act)


class MultimerTemplateEmbedding(nn.Module):
    """Evans et al. (2022) Suppl. 2.1, DeepMind's ``modules_multimer.TemplateEmbedding``: the
    templates' embeddings averaged over all (padded) templates, ReLU, a linear layer to ``c_z``.

    DISCREPANCY: Jumper et al. (2021) Alg. 17 combines templates by point-wise attention; the
    multimer weights average them, dividing by the number of template slots (padding included).
    """

    def __init__(self, cfg: TemplateConfig, c_z: int):
        super().__init__()
        self.single_template_embedding = MultimerSingleTemplateEmbedding(cfg, c_z)
        self.output_linear = Linear(cfg.num_channel, c_z)

    def forward(self, pair: torch.Tensor, batch: dict, mask_2d: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The update of the pair representation (L, L, c_z) from the templates in ``batch``, added
        into ``out`` and returned (``out=pair``: in place, once every template has read the pair);
        by default the update alone, in a new tensor."""
        if out is None:
            out = torch.zeros_like(pair)
        asym = batch["asym_id"]
        multichain = (asym[:, None] == asym[None, :]).float()
        num_templates = batch["template_aatype"].shape[0]
        total = None
        for t in range(num_templates):
            one = self.single_template_embedding(pair, batch["template_aatype"][t],
                                                 batch["template_all_atom_positions"][t],
                                                 batch["template_all_atom_masks"][t], mask_2d, multichain)
            total = one if total is None else total.add_(one)
            del one
        # The output layer a block of rows at a time, each block added into ``out``.
        for s in embedding_steps(total.shape[0], total.shape[1] * pair.shape[-1] * 4):
            add_in_place(out[s], self.output_linear(torch.relu(total[s] / num_templates)))
        return out


class TemplateChiEmbedder(nn.Module):
    """Evans et al. (2022) Suppl. 2.1, DeepMind's ``template_embedding_1d``: each template as an
    extra MSA row of ``c_m`` channels from its residue types and side-chain torsions χ1..χ4 (34
    features: one-hot type, sin χ, cos χ, χ mask). Row mask: χ1's mask.

    DISCREPANCY: the monomer's rows (Jumper et al. 2021 Suppl. Table 1) also hold the backbone
    torsions and the alternative torsions; the multimer's weights read χ only.
    """

    haiku_transparent = True  # its layers live directly in the ``evoformer`` scope

    def __init__(self, c_m: int):
        super().__init__()
        num_chi = 4
        self.template_single_embedding = Linear(_NUM_RESIDUE_CLASSES + 3 * num_chi, c_m)
        self.template_projection = Linear(c_m, c_m)

    def forward(self, template_aatype, template_all_atom_positions, template_all_atom_mask):
        """-> MSA rows (T, L, c_m) and their mask (T, L)."""
        chi, chi_mask = chi_angles(template_aatype, template_all_atom_positions.float(),
                                   template_all_atom_mask.float())
        feat = torch.cat([F.one_hot(template_aatype.long(), _NUM_RESIDUE_CLASSES).float(),
                          torch.sin(chi) * chi_mask, torch.cos(chi) * chi_mask, chi_mask], dim=-1)
        rows = self.template_projection(torch.relu(self.template_single_embedding(feat)))
        return rows, chi_mask[..., 0]


def chi_angles(aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor):
    """Side-chain torsions χ1..χ4 (..., L, 4) in radians and their mask (the residue has the χ and
    its four atoms are present), as DeepMind's ``all_atom_multimer.compute_chi_angles``."""
    indices = torch.as_tensor(_chi_atom_indices(), device=aatype.device)[aatype.long().clamp(max=rc.restype_num)]
    gather = indices.reshape(*indices.shape[:-2], 16)  # (..., L, 16)
    atoms = torch.gather(positions, -2, gather[..., None].expand(*gather.shape, 3)).reshape(*indices.shape, 3)
    a, b, c, d = atoms.unbind(-2)
    v1, v2, v3 = a - b, b - c, d - c
    c1, c2 = torch.cross(v1, v2, dim=-1), torch.cross(v3, v2, dim=-1)
    c3 = torch.cross(c2, c1, dim=-1)
    v2_norm = torch.sqrt(torch.clamp((v2 * v2).sum(-1), min=1e-12))
    angles = torch.atan2((c3 * v2).sum(-1), v2_norm * (c1 * c2).sum(-1))
    has_chi = torch.as_tensor(np.concatenate([np.asarray(rc.chi_angles_mask, np.float32), np.zeros((1, 4), np.float32)]),
                              device=aatype.device)[aatype.long().clamp(max=rc.restype_num)]
    atoms_present = torch.gather(mask, -1, gather).reshape(indices.shape).prod(-1)
    return angles, has_chi * atoms_present
