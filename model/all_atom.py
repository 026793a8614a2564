"""All-atom geometry: torsion angles <-> rigid-group frames <-> atom14 <-> atom37 coordinates.

Jumper et al. (2021) Suppl. 1.8: a residue is eight rigid groups (backbone, pre-ω, φ, ψ, χ1..χ4)
whose frames follow from the backbone frame and seven torsion angles; atoms sit at literature
positions in their group's frame. All functions accept leading batch dimensions unless noted.
"""

from __future__ import annotations

import numpy as np
import torch

from af2cpu.common import residue_constants as rc
from af2cpu.model.geometry import Rigid

_MAX_RESTYPE = rc.restype_num  # UNK; larger indices (gap) are treated as UNK
# The torsions of a residue (pre-ω, φ, ψ, χ1..χ4): what atom37_to_torsion_angles measures and
# torsion_angles_to_frames places groups with.
NUM_TORSIONS = 7


def _table(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(array, device=like.device)


def _gather_restype(array: np.ndarray, aatype: torch.Tensor, dtype=None) -> torch.Tensor:
    """Per-residue rows of a (21, ...) residue-type table; aatype above UNK counts as UNK."""
    table = torch.as_tensor(array, device=aatype.device)
    if dtype is not None:
        table = table.to(dtype)
    return table[aatype.long().clamp(max=_MAX_RESTYPE)]


def _rot_x(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotation about the x axis by the angle with this sine and cosine (Suppl. Alg. 25 'makeRotX')."""
    zeros, ones = torch.zeros_like(sin), torch.ones_like(sin)
    return torch.stack(
        [
            torch.stack([ones, zeros, zeros], dim=-1),
            torch.stack([zeros, cos, -sin], dim=-1),
            torch.stack([zeros, sin, cos], dim=-1),
        ],
        dim=-2,
    )


def torsion_angles_to_frames(
    aatype: torch.Tensor, backbone_to_global: Rigid, angles_sin_cos: torch.Tensor
) -> Rigid:
    """Frames of the 8 rigid groups of every residue in the global frame.

    Jumper et al. (2021) Suppl. Alg. 24 'computeAllAtomCoordinates' lines 1-10.
    aatype (..., N); backbone_to_global with batch shape (..., N); angles_sin_cos (..., N, 7, 2) as
    (sin, cos) of pre-ω, φ, ψ, χ1..χ4. Returns a Rigid with batch shape (..., N, 8).
    """
    default = Rigid.from_tensor_4x4(
        _gather_restype(rc.restype_rigid_group_default_frame, aatype, angles_sin_cos.dtype)
    )
    # The backbone group gets no torsion (rotation by 0).
    sin = torch.cat([torch.zeros_like(angles_sin_cos[..., :1, 0]), angles_sin_cos[..., 0]], dim=-1)
    cos = torch.cat([torch.ones_like(angles_sin_cos[..., :1, 1]), angles_sin_cos[..., 1]], dim=-1)
    to_parent = default.compose_rot(_rot_x(sin, cos))

    # χ2..χ4 groups hang off the previous χ group, the others off the backbone.
    chi1 = to_parent[..., 4]
    chi2 = chi1.compose(to_parent[..., 5])
    chi3 = chi2.compose(to_parent[..., 6])
    chi4 = chi3.compose(to_parent[..., 7])
    to_backbone = Rigid(
        torch.cat(
            [to_parent.rot[..., :5, :, :]] + [f.rot[..., None, :, :] for f in (chi2, chi3, chi4)], dim=-3
        ),
        torch.cat(
            [to_parent.trans[..., :5, :]] + [f.trans[..., None, :] for f in (chi2, chi3, chi4)], dim=-2
        ),
    )
    return backbone_to_global.unsqueeze(-1).compose(to_backbone)


def frames_to_atom14_positions(aatype: torch.Tensor, group_frames: Rigid) -> torch.Tensor:
    """Atom14 coordinates (..., N, 14, 3) from the 8 group frames (batch shape (..., N, 8)).

    Jumper et al. (2021) Suppl. Alg. 24 'computeAllAtomCoordinates' line 11: each atom is its
    literature position mapped through its group's frame; absent atoms are zero.
    """
    group_of_atom = _gather_restype(rc.restype_atom14_to_rigid_group, aatype)  # (..., N, 14)
    rot = torch.gather(
        group_frames.rot, -3, group_of_atom[..., None, None].expand(*group_of_atom.shape, 3, 3)
    )
    trans = torch.gather(group_frames.trans, -2, group_of_atom[..., None].expand(*group_of_atom.shape, 3))
    literature = _gather_restype(rc.restype_atom14_rigid_group_positions, aatype, group_frames.trans.dtype)
    positions = Rigid(rot, trans).apply(literature)
    mask = _gather_restype(rc.restype_atom14_mask, aatype, positions.dtype)
    return positions * mask[..., None]


def atom14_to_atom37(
    atom14: torch.Tensor, residx_atom37_to_atom14: torch.Tensor, atom37_atom_exists: torch.Tensor
) -> torch.Tensor:
    """Scatter atom14 data (..., N, 14[, C]) into the atom37 layout (..., N, 37[, C]); absent atoms 0."""
    index = residx_atom37_to_atom14.long()
    mask = atom37_atom_exists.to(atom14.dtype)
    if atom14.dim() == index.dim() + 1:
        index = index[..., None].expand(*index.shape, atom14.shape[-1])
        mask = mask[..., None]
        return torch.gather(atom14, -2, index) * mask
    return torch.gather(atom14, -1, index) * mask


def atom37_to_atom14(
    atom37: torch.Tensor, residx_atom14_to_atom37: torch.Tensor, atom14_atom_exists: torch.Tensor
) -> torch.Tensor:
    """Gather atom37 data (..., N, 37[, C]) into the atom14 layout (..., N, 14[, C]); absent atoms 0."""
    index = residx_atom14_to_atom37.long()
    mask = atom14_atom_exists.to(atom37.dtype)
    if atom37.dim() == index.dim() + 1:
        index = index[..., None].expand(*index.shape, atom37.shape[-1])
        mask = mask[..., None]
        return torch.gather(atom37, -2, index) * mask
    return torch.gather(atom37, -1, index) * mask


def make_atom14_masks(aatype: np.ndarray) -> dict[str, np.ndarray]:
    """The per-residue atom maps and existence masks of AlphaFold2's processed features.

    Returns 'atom14_atom_exists' (N, 14), 'residx_atom14_to_atom37' (N, 14),
    'residx_atom37_to_atom14' (N, 37) and 'atom37_atom_exists' (N, 37), as numpy arrays.
    """
    aatype = np.minimum(np.asarray(aatype), _MAX_RESTYPE)
    return {
        "atom14_atom_exists": rc.restype_atom14_exists[aatype],
        "residx_atom14_to_atom37": rc.restype_atom14_to_atom37[aatype],
        "residx_atom37_to_atom14": rc.restype_atom37_to_atom14[aatype],
        "atom37_atom_exists": rc.restype_atom37_exists[aatype],
    }


def pseudo_beta(
    aatype: torch.Tensor, atom37_positions: torch.Tensor, atom37_mask: torch.Tensor | None = None
):
    """Cβ position (Cα for glycine) per residue (..., N, 3), and its mask (..., N) if a mask is given."""
    is_gly = aatype == rc.restype_order["G"]
    ca, cb = rc.atom_order["CA"], rc.atom_order["CB"]
    position = torch.where(is_gly[..., None], atom37_positions[..., ca, :], atom37_positions[..., cb, :])
    if atom37_mask is None:
        return position
    mask = torch.where(is_gly, atom37_mask[..., ca], atom37_mask[..., cb]).to(torch.float32)
    return position, mask


def _chi_atom_indices() -> np.ndarray:
    """(21, 4, 4) atom37 indices of the four atoms of each χ; zeros for absent χ and for UNK."""
    return np.concatenate([rc.chi_angles_atom_indices, np.zeros((1, 4, 4), dtype=int)], axis=0)


def atom37_to_torsion_angles(
    aatype: torch.Tensor,
    atom37_positions: torch.Tensor,
    atom37_mask: torch.Tensor,
    placeholder_for_undefined: bool = False,
) -> dict[str, torch.Tensor]:
    """The seven torsions (pre-ω, φ, ψ, χ1..χ4) of each residue as (sin, cos), from atom37 coordinates.

    The torsions of Jumper et al. (2021) Suppl. 1.8.4 and Table 2, measured on given atoms (the
    template torsion features of Suppl. 1.7.1 and the torsion targets). aatype (..., N), atom37_positions (..., N, 37, 3), atom37_mask (..., N, 37).
    Returns 'torsion_angles_sin_cos' (..., N, 7, 2), 'alt_torsion_angles_sin_cos' (the same with
    π-periodic χ flipped by π) and 'torsion_angles_mask' (..., N, 7). With
    `placeholder_for_undefined`, undefined torsions become (sin, cos) = (1, 0) instead of what the
    (meaningless) atoms give; AlphaFold2's template embedding sets it to ``not zero_init``.
    Without it, undefined torsions are whatever a degenerate frame gives (e.g. the first residue's
    pre-ω, built on two all-zero "previous" atoms): rounding noise that no two implementations
    (not even AlphaFold2 eager and under jit) reproduce alike.
    """
    positions = atom37_positions.float()
    mask = atom37_mask.float()
    aatype = aatype.long().clamp(max=_MAX_RESTYPE)

    # The previous residue's atoms; the first residue has none (zeros, mask 0).
    prev_positions = torch.cat(
        [torch.zeros_like(positions[..., :1, :, :]), positions[..., :-1, :, :]], dim=-3
    )
    prev_mask = torch.cat([torch.zeros_like(mask[..., :1, :]), mask[..., :-1, :]], dim=-2)

    n, ca, c, o = (rc.atom_order[a] for a in ("N", "CA", "C", "O"))
    pre_omega_atoms = torch.stack(
        [prev_positions[..., ca, :], prev_positions[..., c, :], positions[..., n, :], positions[..., ca, :]],
        dim=-2,
    )
    phi_atoms = torch.stack(
        [prev_positions[..., c, :], positions[..., n, :], positions[..., ca, :], positions[..., c, :]], dim=-2
    )
    psi_atoms = torch.stack(
        [positions[..., n, :], positions[..., ca, :], positions[..., c, :], positions[..., o, :]], dim=-2
    )
    pre_omega_mask = prev_mask[..., ca] * prev_mask[..., c] * mask[..., n] * mask[..., ca]
    phi_mask = prev_mask[..., c] * mask[..., n] * mask[..., ca] * mask[..., c]
    psi_mask = mask[..., n] * mask[..., ca] * mask[..., c] * mask[..., o]

    chi_index = _table(_chi_atom_indices(), aatype)[aatype]  # (..., N, 4, 4)
    flat_index = chi_index.flatten(-2)  # (..., N, 16)
    chi_atoms = torch.gather(positions, -2, flat_index[..., None].expand(*flat_index.shape, 3))
    chi_atoms = chi_atoms.unflatten(-2, (4, 4))  # (..., N, 4, 4, 3)
    chi_atoms_mask = torch.gather(mask, -1, flat_index).unflatten(-1, (4, 4)).prod(-1)
    chi_exists = _gather_restype(np.array(rc.chi_angles_mask + [[0.0] * 4], np.float32), aatype)
    chi_mask = chi_exists * chi_atoms_mask

    torsion_atoms = torch.cat(
        [pre_omega_atoms[..., None, :, :], phi_atoms[..., None, :, :], psi_atoms[..., None, :, :], chi_atoms],
        dim=-3,
    )
    torsion_mask = torch.cat(
        [pre_omega_mask[..., None], phi_mask[..., None], psi_mask[..., None], chi_mask], dim=-1
    )

    # In the frame with atom 3 at the origin, atom 2 on the negative x axis and atom 1 in the xy
    # plane, the fourth atom's (z, y) direction is (sin, cos) of the torsion.
    frames = Rigid.from_3_points(
        point_on_neg_x_axis=torsion_atoms[..., 1, :],
        origin=torsion_atoms[..., 2, :],
        point_on_xy_plane=torsion_atoms[..., 0, :],
    )
    fourth = frames.invert_apply(torsion_atoms[..., 3, :])
    sin_cos = torch.stack([fourth[..., 2], fourth[..., 1]], dim=-1)
    # DISCREPANCY: AlphaFold2 regularizes the normalization with 1e-8 (finite for missing atoms).
    sin_cos = sin_cos / torch.sqrt((sin_cos * sin_cos).sum(-1, keepdim=True) + 1e-8)
    # ψ is measured through O, which sits opposite the next residue's N: mirror it.
    sign = sin_cos.new_tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    sin_cos = sin_cos * sign[:, None]

    chi_pi_periodic = _gather_restype(np.array(rc.chi_pi_periodic, np.float32), aatype)
    flip = torch.cat([torch.ones_like(chi_pi_periodic[..., :3]), 1.0 - 2.0 * chi_pi_periodic], dim=-1)
    alt_sin_cos = sin_cos * flip[..., None]

    if placeholder_for_undefined:
        placeholder = torch.stack([torch.ones_like(torsion_mask), torch.zeros_like(torsion_mask)], dim=-1)
        m = torsion_mask[..., None]
        sin_cos = sin_cos * m + placeholder * (1 - m)
        alt_sin_cos = alt_sin_cos * m + placeholder * (1 - m)

    return {
        "torsion_angles_sin_cos": sin_cos,
        "alt_torsion_angles_sin_cos": alt_sin_cos,
        "torsion_angles_mask": torsion_mask,
    }
