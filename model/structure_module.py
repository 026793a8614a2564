"""The structure module: single and pair representations -> backbone frames and all-atom coordinates.

Attribute paths mirror the haiku scopes under ``alphafold/alphafold_iteration/structure_module``
(``fold_iteration/invariant_point_attention/q_scalar`` is
``structure_module.fold_iteration.invariant_point_attention.q_scalar``). The eight iterations share
one set of weights, as in AlphaFold2. The module always computes in fp32, whatever the dtype of
the trunk (AlphaFold2 keeps the structure module in full precision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.model import all_atom
from af2cpu.model.geometry import QuatRigid, Rigid
from af2cpu.model.heads import by_rows, row_blocks
from af2cpu.model.options import STRUCTURE_WHOLE_PAIR_BYTES
from af2cpu.model.presets import StructureModuleConfig
from af2cpu.model.primitives import LayerNorm, Linear


class InvariantPointAttention(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 22 'InvariantPointAttention'.

    Attention whose logits combine scalar query-key products, the pair representation, and the
    distances between query and key points placed by each residue in its own frame and compared in
    the global frame; so the result is invariant to global rotations and translations. The pair
    representation has ``c_z`` channels.
    """

    def __init__(self, cfg: StructureModuleConfig, c_z: int, dist_epsilon: float = 1e-8):
        super().__init__()
        self.cfg = cfg
        h, c = cfg.num_head, cfg.num_channel
        if cfg.multimer:
            # DISCREPANCY: the multimer's weights have no bias on the scalar projections, and keys
            # and values projected separately (DeepMind's folding_multimer).
            self.q_scalar_projection = Linear(c, (h, cfg.num_scalar_qk), use_bias=False)
            self.k_scalar_projection = Linear(c, (h, cfg.num_scalar_qk), use_bias=False)
            self.v_scalar_projection = Linear(c, (h, cfg.num_scalar_v), use_bias=False)
            self.q_point_projection = PointProjection(c, h, cfg.num_point_qk)
            self.k_point_projection = PointProjection(c, h, cfg.num_point_qk)
            self.v_point_projection = PointProjection(c, h, cfg.num_point_v)
        else:
            self.q_scalar = Linear(c, h * cfg.num_scalar_qk)
            self.kv_scalar = Linear(c, h * (cfg.num_scalar_qk + cfg.num_scalar_v))
            self.q_point_local = Linear(c, h * 3 * cfg.num_point_qk)
            self.kv_point_local = Linear(c, h * 3 * (cfg.num_point_qk + cfg.num_point_v))
        # softplus^-1(1): the initial per-head point weight is 1.
        self.trainable_point_weights = nn.Parameter(torch.full((h,), math.log(math.e - 1.0)))
        self.attention_2d = Linear(c_z, h)
        num_features = h * (cfg.num_scalar_v + 4 * cfg.num_point_v + c_z)
        self.output_projection = Linear(num_features, c)
        self.dist_epsilon = dist_epsilon

    def _points(self, linear: Linear, act: torch.Tensor, frames: Rigid, num_points: int) -> torch.Tensor:
        """Per-head points (N, H, P, 3) in the global frame, from local points predicted by `linear`."""
        n = act.shape[0]
        # The projection lays out all x coordinates, then all y, then all z.
        local = linear(act).reshape(n, 3, self.cfg.num_head * num_points).transpose(1, 2)  # (N, H*P, 3)
        return frames.unsqueeze(-1).apply(local).reshape(n, self.cfg.num_head, num_points, 3)

    def forward(
        self,
        act: torch.Tensor,
        pair: torch.Tensor,
        mask: torch.Tensor,
        frames: Rigid,
        pair_bias: torch.Tensor | None = None,
        pair_norm: nn.Module | None = None,
    ) -> torch.Tensor:
        """act (N, c_s), pair (N, N, c_z), mask (N,), frames with batch shape (N,) -> (N, c_s).

        `pair_bias` is ``self.attention_2d(pair)`` when the caller already has it: the structure
        module computes it once for its eight iterations, which share weights and pair input.
        With `pair_norm` (a layer norm), the attention reads ``pair_norm(pair)``, normalised a block
        of rows at a time in fp32 as it is read: the pair may be the trunk's (bf16 or fp32), and no
        normalised fp32 copy of it exists whole.
        """
        cfg = self.cfg
        n, h = act.shape[0], cfg.num_head

        if cfg.multimer:
            q, k, v = (layer(act) for layer in (self.q_scalar_projection, self.k_scalar_projection,
                                                self.v_scalar_projection))
            q_pts, k_pts, v_pts = (layer(act, frames) for layer in (self.q_point_projection, self.k_point_projection,
                                                                    self.v_point_projection))
        else:
            q = self.q_scalar(act).reshape(n, h, cfg.num_scalar_qk)
            k, v = self.kv_scalar(act).reshape(n, h, -1).split([cfg.num_scalar_qk, cfg.num_scalar_v], dim=-1)
            q_pts = self._points(self.q_point_local, act, frames, cfg.num_point_qk)
            kv_pts = self._points(self.kv_point_local, act, frames, cfg.num_point_qk + cfg.num_point_v)
            k_pts, v_pts = kv_pts.split([cfg.num_point_qk, cfg.num_point_v], dim=-2)

        # The paper's w_L = sqrt(1/3) and w_C = sqrt(2 / (9 N_qk)) folded into one weight per
        # logit term (scalar, point, pair), each term then having unit variance at initialisation.
        scalar_weight = math.sqrt(1.0 / (3 * cfg.num_scalar_qk))
        head_weight = F.softplus(self.trainable_point_weights.float())
        point_weight = math.sqrt(1.0 / (3 * cfg.num_point_qk * 9.0 / 2)) * head_weight
        pair_weight = math.sqrt(1.0 / 3)

        logits = torch.einsum("ihc,jhc->hij", q * scalar_weight, k)
        # Squared distances from coordinate differences, not the expanded |q|^2 + |k|^2 - 2 q.k,
        # which loses fp32 digits for points far from the origin; one coordinate of one point at
        # a time, on contiguous (H, N) planes, so that memory stays O(H N^2).
        q_planes = q_pts.permute(2, 3, 1, 0).contiguous()  # (P, 3, H, N)
        k_planes = k_pts.permute(2, 3, 1, 0).contiguous()
        point_weight = point_weight[:, None, None]
        weighted_dist2 = torch.zeros_like(logits)
        for p in range(cfg.num_point_qk):
            dist2 = (q_planes[p, 0, :, :, None] - k_planes[p, 0, :, None, :]).square_()
            for x in (1, 2):
                dist2 += (q_planes[p, x, :, :, None] - k_planes[p, x, :, None, :]).square_()
            weighted_dist2 += point_weight * dist2
        logits = logits + -0.5 * weighted_dist2
        if pair_bias is None:
            pair_bias = by_rows(lambda rows: self.attention_2d(rows if pair_norm is None else pair_norm(rows)), pair)
        logits = logits + pair_weight * pair_bias.permute(2, 0, 1)
        # DISCREPANCY: the paper has no mask; AlphaFold2 keeps padded residues out of every
        # attention with a -1e5 logit penalty.
        mask_2d = mask[:, None] * mask[None, :]
        logits = logits - 1e5 * (1.0 - mask_2d)
        attn = torch.softmax(logits, dim=-1)  # (H, N_q, N_k)

        out_scalar = torch.einsum("hij,jhc->ihc", attn, v).reshape(n, -1)
        out_pts_global = torch.einsum("hij,jhpx->ihpx", attn, v_pts)  # (N, H, P, 3)
        out_pts = (
            frames.unsqueeze(-1).unsqueeze(-1).invert_apply(out_pts_global).reshape(n, h * cfg.num_point_v, 3)
        )
        # DISCREPANCY: the norm of the output points is regularized with 1e-8 (finite gradient at 0);
        # the multimer clamps the norm at 1e-8 instead.
        norm2 = (out_pts * out_pts).sum(-1)
        out_norm = (torch.sqrt(torch.clamp(norm2, min=self.dist_epsilon**2)) if cfg.multimer
                    else torch.sqrt(self.dist_epsilon + norm2))
        out_pair = attn.new_empty((n, h, pair.shape[-1]))
        for s in row_blocks(pair):
            rows = pair[s].float()
            out_pair[s] = torch.einsum("hij,ijc->ihc", attn[:, s], rows if pair_norm is None else pair_norm(rows))
        out_pair = out_pair.reshape(n, -1)
        features = torch.cat(
            [out_scalar, out_pts[..., 0], out_pts[..., 1], out_pts[..., 2], out_norm, out_pair], dim=-1
        )
        return self.output_projection(features)


class PointProjection(nn.Module):
    """Per-head points of the multimer's IPA (DeepMind's ``folding_multimer.PointProjection``): a
    linear layer ``point_projection`` to (heads, 3 x points), x, y, z each a block of ``points``
    per head, placed in the global frame by each residue's frame -> (N, heads, points, 3)."""

    def __init__(self, num_channel: int, num_head: int, num_points: int):
        super().__init__()
        self.point_projection = Linear(num_channel, (num_head, 3 * num_points))

    def forward(self, act: torch.Tensor, frames: Rigid) -> torch.Tensor:
        local = torch.stack(self.point_projection(act).chunk(3, dim=-1), dim=-1)  # (N, H, P, 3)
        return frames.unsqueeze(-1).unsqueeze(-1).apply(local)


class BackboneUpdate(Linear):
    """Jumper et al. (2021) Suppl. Alg. 23 'BackboneUpdate'.

    Predicts, per residue, a rotation as the non-unit quaternion (1, b, c, d) and a translation,
    and applies it before the current frame. It is the Linear layer of haiku scope
    ``fold_iteration/affine_update`` itself, so its parameters sit where the official file has them.
    """

    def __init__(self, num_channel: int):
        # The update: (b, c, d) of the quaternion (1, b, c, d) and the translation.
        super().__init__(num_channel, 6)

    def forward(self, act: torch.Tensor, frames: QuatRigid) -> QuatRigid:
        return frames.pre_compose(super().forward(act))


class QuatRigidUpdate(nn.Module):
    """The multimer's backbone update (DeepMind's ``folding_multimer.QuatRigid``, scope
    ``quat_rigid/rigid``): the same update as Alg. 23, the current frame composed with the rigid
    of the normalised quaternion (1, b, c, d) and the translation."""

    def __init__(self, num_channel: int):
        super().__init__()
        self.rigid = BackboneUpdate(num_channel)

    def forward(self, act: torch.Tensor, frames: QuatRigid) -> QuatRigid:
        return self.rigid(act, frames)


class TorsionAngleResNet(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 20 'StructureModule' lines 11-14: the torsion-angle ResNet.

    Predicts the seven torsion angles of every residue as unnormalized (sin, cos) pairs from the
    current (``num_input`` channels) and the initial (``num_initial_input`` channels) single
    representation (haiku scope ``rigid_sidechain``).
    """

    def __init__(self, num_input: int, num_initial_input: int, num_channel: int, num_residual_block: int):
        super().__init__()
        self.input_projection = Linear(num_input, num_channel)
        self.input_projection_1 = Linear(num_initial_input, num_channel)
        self.num_residual_block = num_residual_block
        # haiku names the repeated blocks resblock1, resblock1_1, ... (shared scope, suffixed).
        for i in range(num_residual_block):
            suffix = "" if i == 0 else f"_{i}"
            setattr(self, f"resblock1{suffix}", Linear(num_channel, num_channel))
            setattr(self, f"resblock2{suffix}", Linear(num_channel, num_channel))
        self.unnormalized_angles = Linear(num_channel, 2 * all_atom.NUM_TORSIONS)

    def forward(self, act: torch.Tensor, initial_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (angles, unnormalized angles), each (N, 7, 2) as (sin, cos)."""
        # DISCREPANCY: the paper projects s_i and s_i^initial directly; the released weights were
        # trained with a ReLU before each input projection.
        x = self.input_projection(F.relu(act)) + self.input_projection_1(F.relu(initial_act))
        for i in range(self.num_residual_block):
            suffix = "" if i == 0 else f"_{i}"
            y = getattr(self, f"resblock1{suffix}")(F.relu(x))
            x = x + getattr(self, f"resblock2{suffix}")(F.relu(y))
        unnormalized = self.unnormalized_angles(F.relu(x)).reshape(x.shape[0], all_atom.NUM_TORSIONS, 2)
        # DISCREPANCY: normalized with the squared norm clamped at 1e-12, as AlphaFold2 does.
        norm = torch.sqrt(torch.clamp((unnormalized * unnormalized).sum(-1, keepdim=True), min=1e-12))
        return unnormalized / norm, unnormalized


class FoldIteration(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 20 'StructureModule' lines 6-21: one shared-weight iteration.

    IPA with a residual and layer norm, a three-layer transition with a residual and layer norm,
    the backbone update, and the torsion angles with the all-atom coordinates they imply. The initial
    single representation has ``c_s`` channels, the pair representation ``c_z``.
    """

    def __init__(self, cfg: StructureModuleConfig, c_s: int, c_z: int):
        super().__init__()
        self.cfg = cfg
        c = cfg.num_channel
        self.invariant_point_attention = InvariantPointAttention(cfg, c_z)
        self.attention_layer_norm = LayerNorm(c)
        # haiku scopes transition, transition_1, transition_2.
        self.transition = Linear(c, c)
        for i in range(1, cfg.num_layer_in_transition):
            setattr(self, f"transition_{i}", Linear(c, c))
        self.transition_layer_norm = LayerNorm(c)
        if cfg.multimer:
            self.quat_rigid = QuatRigidUpdate(c)
        else:
            self.affine_update = BackboneUpdate(c)
        self.rigid_sidechain = TorsionAngleResNet(
            c, c_s, cfg.sidechain_num_channel, cfg.sidechain_num_residual_block
        )

    def _transition_layers(self) -> list[Linear]:
        return [self.transition] + [
            getattr(self, f"transition_{i}") for i in range(1, self.cfg.num_layer_in_transition)
        ]

    def forward(self, act, initial_act, pair, mask, frames: QuatRigid, aatype, pair_bias=None, pair_norm=None):
        act = act + self.invariant_point_attention(act, pair, mask, frames.to_rigid(), pair_bias, pair_norm)
        act = self.attention_layer_norm(act)
        x = act
        layers = self._transition_layers()
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = F.relu(x)
        act = self.transition_layer_norm(act + x)

        frames = (self.quat_rigid if self.cfg.multimer else self.affine_update)(act, frames)

        angles, unnormalized = self.rigid_sidechain(act, initial_act)
        # Frames are kept in nanometres inside the loop; atoms are placed in Å.
        backbone = frames.to_rigid().scale_translation(self.cfg.position_scale)
        group_frames = all_atom.torsion_angles_to_frames(aatype, backbone, angles)
        atom14 = all_atom.frames_to_atom14_positions(aatype, group_frames)
        outputs = {
            "affine": frames.to_tensor_7(),
            "angles_sin_cos": angles,
            "unnormalized_angles_sin_cos": unnormalized,
            "atom_pos": atom14,
            "frames": group_frames.to_tensor_4x4(),
        }
        # Alg. 20 line 20: no gradient flows through the rotations into the next iteration.
        frames = QuatRigid(frames.quat.detach(), frames.trans)
        return act, frames, outputs


class StructureModule(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 20 'StructureModule'.

    `forward(representations, batch)` takes the Evoformer's 'single' (N, c_s) and 'pair'
    (N, N, c_z) and the processed features 'aatype', 'seq_mask', 'atom14_atom_exists',
    'residx_atom37_to_atom14', 'atom37_atom_exists' (all (N, ...), no batch dimension), and returns
    what AlphaFold2's structure module returns: 'final_atom_positions' (N, 37, 3) in Å,
    'final_atom_mask', 'final_atom14_positions', 'final_atom14_mask', 'final_affines' (N, 7),
    'traj' (num_layer, N, 7) backbone frames as quaternion + translation in Å, 'sidechains'
    (per-iteration 'angles_sin_cos', 'unnormalized_angles_sin_cos', 'atom_pos' (num_layer, N, 14,
    3) and 'frames' (num_layer, N, 8, 4, 4)) and 'representations': {'structure_module': (N, c)}.
    ``c_s`` and ``c_z`` are the widths of the single and pair representations.
    """

    def __init__(self, cfg: StructureModuleConfig, c_s: int, c_z: int):
        super().__init__()
        self.cfg = cfg
        self.single_layer_norm = LayerNorm(c_s)
        self.initial_projection = Linear(c_s, cfg.num_channel)
        self.pair_layer_norm = LayerNorm(c_z)
        self.fold_iteration = FoldIteration(cfg, c_s, c_z)

    def forward(self, representations: dict, batch: dict) -> dict:
        single = torch.as_tensor(representations["single"]).float()
        # The trunk's pair (its own dtype): layer-normed in fp32, whole when small, else a block of rows
        # at a time where it is read.
        pair = torch.as_tensor(representations["pair"])
        device = single.device

        def feature(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.as_tensor(batch[name], device=device).to(dtype)

        aatype = feature("aatype", torch.long)
        seq_mask = feature("seq_mask")
        atom14_exists = feature("atom14_atom_exists")
        atom37_exists = feature("atom37_atom_exists")

        act = self.single_layer_norm(single)
        initial_act = act
        act = self.initial_projection(act)
        frames = QuatRigid.identity((single.shape[0],), device=device)

        pair_norm = self.pair_layer_norm
        if pair.numel() * 4 <= STRUCTURE_WHOLE_PAIR_BYTES:  # small: normalised once, whole
            pair, pair_norm = pair_norm(pair.float()), None
        attention_2d = self.fold_iteration.invariant_point_attention.attention_2d
        pair_bias = by_rows(lambda rows: attention_2d(rows if pair_norm is None else pair_norm(rows)), pair)
        per_iteration = []
        for _ in range(self.cfg.num_layer):
            act, frames, out = self.fold_iteration(
                act, initial_act, pair, seq_mask, frames, aatype, pair_bias, pair_norm
            )
            per_iteration.append(out)
        stacked = {k: torch.stack([o[k] for o in per_iteration]) for k in per_iteration[0]}

        scale = torch.tensor([1.0] * 4 + [self.cfg.position_scale] * 3, device=device)
        traj = stacked.pop("affine") * scale
        atom14 = stacked["atom_pos"][-1]
        atom37 = all_atom.atom14_to_atom37(
            atom14, feature("residx_atom37_to_atom14", torch.long), atom37_exists
        )
        atom37 = atom37 * atom37_exists[..., None]
        return {
            "representations": {"structure_module": act},
            "traj": traj,
            "sidechains": stacked,
            "final_atom14_positions": atom14,
            "final_atom14_mask": atom14_exists,
            "final_atom_positions": atom37,
            "final_atom_mask": atom37_exists,
            "final_affines": traj[-1],
        }
