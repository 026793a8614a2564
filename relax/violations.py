"""Structural violations of a protein: AlphaFold2's bond, angle and clash checks, counted per residue.

The criteria are AlphaFold2's (Jumper et al. 2021, Suppl. 1.9.11, as its relaxation applies them:
violation tolerance factor 12, clash overlap tolerance 1.5 Å), evaluated on heavy atoms (no OXT,
no hydrogens):

* bond lengths within a residue (``stereo_chemical_props.txt``) and of the peptide bond C(i)-N(i+1)
  may not differ from the literature length by more than 12 standard deviations;
* bond angles within a residue, checked as the distance between the two outer atoms (law of cosines),
  and the angles CA-C-N and C-N-CA across the peptide bond (checked on their cosines), likewise;
* clashes: two atoms not bonded as above may not come closer than the sum of their van der Waals
  radii minus 1.5 Å (between residues the peptide bond and CYS SG-SG disulfides are exempt).

A residue "violates" when it takes part in any of these; that per-residue mask is what AlphaFold2's
relaxation loop reads, and it is what :attr:`Violations.mask` reproduces. For a complex the counts
also say which clashes are between chains, and how many peptide bonds are broken (a C-N bond
outside the tolerance: where a predicted chain comes apart).

DISCREPANCY: only atoms present in the structure are checked. AlphaFold2's relaxation checks every
atom the residue type has, absent ones at the origin; the two agree on complete structures, which
is all AlphaFold2's relaxation accepts.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.common.protein import Protein

VIOLATION_TOLERANCE_FACTOR = 12.0
CLASH_OVERLAP_TOLERANCE = 1.5
_EPS = 1e-6  # inside square roots, as AlphaFold2 computes lengths

_NONBONDED, _BOND, _ANGLE = 0, 1, 2
_OXT = rc.atom_order["OXT"]


@dataclasses.dataclass(frozen=True)
class Violations:
    """Per-residue counts of violated terms; a term between two residues counts for both."""

    bond: np.ndarray  # (L,) int
    angle: np.ndarray  # (L,) int
    clash: np.ndarray  # (L,) int
    num_bond: int  # distinct violated bond lengths
    num_angle: int  # distinct violated angles
    num_clash: int  # distinct clashing atom pairs
    num_peptide_bond: int = 0  # of num_bond, the peptide bonds C(i)-N(i+1)
    # Of num_clash, the atom pairs of two chains: {(chain_index a, chain_index b): pairs}, a < b.
    interchain_clashes: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """(L,) bool: residues that take part in any violation."""
        return (self.bond + self.angle + self.clash) > 0

    @property
    def num_residues(self) -> int:
        return int(self.mask.sum())

    @property
    def num_interchain_clash(self) -> int:
        """Clashing atom pairs whose atoms lie in different chains."""
        return sum(self.interchain_clashes.values())


@functools.cache
def _intra_residue_bounds() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per residue type (21, 37, 37): lower and upper distance bounds, term kind, and atom mask (21, 37)."""
    residue_bonds, residue_virtual_bonds, _ = rc.load_stereo_chemical_props()
    lower = np.zeros((rc.restype_num + 1, rc.atom_type_num, rc.atom_type_num))
    upper = np.full_like(lower, np.inf)
    kind = np.zeros(lower.shape, dtype=np.int8)
    atom_exists = rc.STANDARD_ATOM_MASK.astype(bool)  # heavy atoms of each type, no OXT; none for UNK
    for t, one_letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[one_letter]
        names = rc.residue_atoms[resname]
        idx = [rc.atom_order[n] for n in names]
        for a, name_a in zip(idx, names):
            for b, name_b in zip(idx, names):
                radius_sum = rc.van_der_waals_radius[name_a[0]] + rc.van_der_waals_radius[name_b[0]]
                lower[t, a, b] = radius_sum - CLASH_OVERLAP_TOLERANCE
        for term_kind, bonds in ((_BOND, residue_bonds[resname]), (_ANGLE, residue_virtual_bonds[resname])):
            for bond in bonds:
                a, b = rc.atom_order[bond.atom1_name], rc.atom_order[bond.atom2_name]
                margin = VIOLATION_TOLERANCE_FACTOR * bond.stddev
                lower[t, a, b] = lower[t, b, a] = bond.length - margin
                upper[t, a, b] = upper[t, b, a] = bond.length + margin
                kind[t, a, b] = kind[t, b, a] = term_kind
    return lower, upper, kind, atom_exists


def _checked_atoms(prot: Protein) -> np.ndarray:
    """(L, 37) bool: present heavy atoms that belong to the residue's type (OXT and UNK left out)."""
    _, _, _, atom_exists = _intra_residue_bounds()
    return (prot.atom_mask > 0.5) & atom_exists[prot.aatype]


def _within_residue(prot: Protein, checked: np.ndarray, counts: dict[str, np.ndarray]) -> dict[str, int]:
    lower, upper, kind, _ = _intra_residue_bounds()
    pos = prot.atom_positions
    dist = np.sqrt(_EPS + np.sum((pos[:, :, None, :] - pos[:, None, :, :]) ** 2, axis=-1))
    pair = checked[:, :, None] & checked[:, None, :] & np.triu(np.ones((37, 37), dtype=bool), k=1)
    t = prot.aatype
    bad = pair & ((dist < lower[t]) | (dist > upper[t]))
    totals = {}
    for name, k in (("bond", _BOND), ("angle", _ANGLE), ("clash", _NONBONDED)):
        per_res = np.sum(bad & (kind[t] == k), axis=(1, 2))
        counts[name] += per_res
        totals[name] = int(per_res.sum())
    return totals


def _peptide_neighbours(prot: Protein) -> np.ndarray:
    """(L-1,) bool: residue i+1 follows residue i in the same chain without a numbering gap."""
    return (np.diff(prot.residue_index) == 1) & (np.diff(prot.chain_index) == 0)


def _between_residues(prot: Protein, checked: np.ndarray, counts: dict[str, np.ndarray]) -> dict[str, int]:
    if prot.num_residues < 2:
        return {"bond": 0, "angle": 0}
    n, ca, c = rc.atom_order["N"], rc.atom_order["CA"], rc.atom_order["C"]
    pos = prot.atom_positions
    linked = _peptide_neighbours(prot)
    this_ca, this_c = pos[:-1, ca], pos[:-1, c]
    next_n, next_ca = pos[1:, n], pos[1:, ca]

    def length(v):
        return np.sqrt(_EPS + np.sum(v**2, axis=-1))

    c_n = length(next_n - this_c)
    next_is_pro = prot.aatype[1:] == rc.restype_order["P"]
    gt_length = np.where(next_is_pro, rc.between_res_bond_length_c_n[1], rc.between_res_bond_length_c_n[0])
    gt_stddev = np.where(
        next_is_pro, rc.between_res_bond_length_stddev_c_n[1], rc.between_res_bond_length_stddev_c_n[0]
    )
    bond_bad = (
        linked
        & checked[:-1, c]
        & checked[1:, n]
        & (np.sqrt(_EPS + (c_n - gt_length) ** 2) > VIOLATION_TOLERANCE_FACTOR * gt_stddev)
    )

    c_ca_unit = (this_ca - this_c) / length(this_ca - this_c)[:, None]
    c_n_unit = (next_n - this_c) / c_n[:, None]
    n_ca_unit = (next_ca - next_n) / length(next_ca - next_n)[:, None]
    cos_ca_c_n = np.sum(c_ca_unit * c_n_unit, axis=-1)
    cos_c_n_ca = np.sum(-c_n_unit * n_ca_unit, axis=-1)
    gt_ca_c_n = rc.between_res_cos_angles_ca_c_n[0]
    # DISCREPANCY: AlphaFold2 measures the CA-C-N cosine error against the C-N *bond length*
    # standard deviation (0.014) instead of the angle's own (0.0311). Its relaxation loop decides on
    # that stricter criterion, so we keep it to exclude the same residues from the restraints.
    sd_ca_c_n = rc.between_res_bond_length_stddev_c_n[0]
    gt_c_n_ca, sd_c_n_ca = rc.between_res_cos_angles_c_n_ca
    ca_c_n_bad = (
        linked
        & checked[:-1, ca]
        & checked[:-1, c]
        & checked[1:, n]
        & (np.sqrt(_EPS + (cos_ca_c_n - gt_ca_c_n) ** 2) > VIOLATION_TOLERANCE_FACTOR * sd_ca_c_n)
    )
    c_n_ca_bad = (
        linked
        & checked[:-1, c]
        & checked[1:, n]
        & checked[1:, ca]
        & (np.sqrt(_EPS + (cos_c_n_ca - gt_c_n_ca) ** 2) > VIOLATION_TOLERANCE_FACTOR * sd_c_n_ca)
    )
    angle_bad = ca_c_n_bad.astype(int) + c_n_ca_bad.astype(int)
    for name, per_link in (("bond", bond_bad.astype(int)), ("angle", angle_bad)):
        counts[name][:-1] += per_link
        counts[name][1:] += per_link
    return {"bond": int(bond_bad.sum()), "angle": int(angle_bad.sum())}


def _between_residue_clashes(
    prot: Protein, checked: np.ndarray, counts: dict[str, np.ndarray]
) -> tuple[int, dict[tuple[int, int], int]]:
    res_of_atom, atom_of_atom = np.nonzero(checked)
    xyz = prot.atom_positions[res_of_atom, atom_of_atom]
    radius = np.array([rc.van_der_waals_radius[rc.atom_types[a][0]] for a in atom_of_atom])
    is_c = atom_of_atom == rc.atom_order["C"]
    is_n = atom_of_atom == rc.atom_order["N"]
    is_cys_sg = (atom_of_atom == rc.atom_order["SG"]) & (prot.aatype[res_of_atom] == rc.restype_order["C"])
    follows = np.zeros(prot.num_residues, dtype=bool)  # residue i is peptide-bonded to residue i-1
    follows[1:] = _peptide_neighbours(prot)
    limit_max = 2 * max(rc.van_der_waals_radius.values()) - CLASH_OVERLAP_TOLERANCE
    total = 0
    interchain: dict[tuple[int, int], int] = {}
    chain_of_atom = prot.chain_index[res_of_atom]
    block = 256  # rows per block: 256 x atoms x 3 doubles stays small even for large complexes
    for start in range(0, len(xyz), block):
        rows = slice(start, start + block)
        dist = np.sqrt(_EPS + np.sum((xyz[rows, None, :] - xyz[None, :, :]) ** 2, axis=-1))
        i, j = np.nonzero(dist < limit_max)
        i += start
        keep = res_of_atom[i] < res_of_atom[j]
        i, j = i[keep], j[keep]
        d = np.sqrt(_EPS + np.sum((xyz[i] - xyz[j]) ** 2, axis=-1))
        peptide = is_c[i] & is_n[j] & (res_of_atom[j] == res_of_atom[i] + 1) & follows[res_of_atom[j]]
        disulfide = is_cys_sg[i] & is_cys_sg[j]
        clash = (d < radius[i] + radius[j] - CLASH_OVERLAP_TOLERANCE) & ~peptide & ~disulfide
        np.add.at(counts["clash"], res_of_atom[i[clash]], 1)
        np.add.at(counts["clash"], res_of_atom[j[clash]], 1)
        total += int(clash.sum())
        between = clash & (chain_of_atom[i] != chain_of_atom[j])
        for a, b in zip(chain_of_atom[i[between]], chain_of_atom[j[between]]):
            key = (int(min(a, b)), int(max(a, b)))
            interchain[key] = interchain.get(key, 0) + 1
    return total, interchain


def find_violations(prot: Protein) -> Violations:
    """Bond-length, bond-angle and clash violations of `prot` (see the module docstring)."""
    checked = _checked_atoms(prot)
    counts = {name: np.zeros(prot.num_residues, dtype=np.int64) for name in ("bond", "angle", "clash")}
    within = _within_residue(prot, checked, counts)
    between = _between_residues(prot, checked, counts)
    clashes, interchain = _between_residue_clashes(prot, checked, counts)
    return Violations(
        bond=counts["bond"],
        angle=counts["angle"],
        clash=counts["clash"],
        num_bond=within["bond"] + between["bond"],
        num_angle=within["angle"] + between["angle"],
        num_clash=within["clash"] + clashes,
        num_peptide_bond=between["bond"],
        interchain_clashes=dict(sorted(interchain.items())),
    )
