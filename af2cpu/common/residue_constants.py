"""Residue and atom constants of AlphaFold2 (Jumper et al. 2021, Suppl. 1.2.1 and Table 2).

These are facts about proteins and about AlphaFold2's conventions (alphabets, atom orders, ideal
geometry); every stage uses the same tables so that features, the network and the relaxer agree.
"""

from __future__ import annotations

import collections
import functools
from importlib import resources
from typing import NamedTuple

import numpy as np

# The 20 standard amino acids in AlphaFold2's order (alphabetical by 3-letter code).
restypes = [
    "A", "R", "N", "D", "C", "Q", "E", "G", "H", "I",
    "L", "K", "M", "F", "P", "S", "T", "W", "Y", "V",
]  # fmt: skip
restype_order = {r: i for i, r in enumerate(restypes)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num  # "X"
restypes_with_x = restypes + ["X"]
restype_order_with_x = {r: i for i, r in enumerate(restypes_with_x)}

restype_1to3 = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
restype_3to1 = {v: k for k, v in restype_1to3.items()}
unk_restype = "UNK"
resnames = [restype_1to3[r] for r in restypes] + [unk_restype]
resname_to_idx = {name: i for i, name in enumerate(resnames)}

# The 37 heavy-atom slots of the atom37 representation, in AlphaFold2's order.
atom_types = [
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1",
    "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2",
    "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
]  # fmt: skip
atom_order = {a: i for i, a in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37

PROTEIN_CHAIN = "polypeptide(L)"
POLYMER_CHAIN = "polymer"

# Distance between consecutive Cα atoms of a trans peptide (ω = 180°), in Å.
ca_ca = 3.80209737096

# The side-chain torsions χ1..χ4 of each residue type, each given by its four defining atoms.
# Arginine's χ5 is always 0 ± 5° and is left out, as AlphaFold2 does.
chi_angles_atoms = {
    "ALA": [],
    "ARG": [
        ["N", "CA", "CB", "CG"],
        ["CA", "CB", "CG", "CD"],
        ["CB", "CG", "CD", "NE"],
        ["CG", "CD", "NE", "CZ"],
    ],
    "ASN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "ASP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "CYS": [["N", "CA", "CB", "SG"]],
    "GLN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLY": [],
    "HIS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LEU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "LYS": [
        ["N", "CA", "CB", "CG"],
        ["CA", "CB", "CG", "CD"],
        ["CB", "CG", "CD", "CE"],
        ["CG", "CD", "CE", "NZ"],
    ],
    "MET": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "PHE": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "PRO": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "TRP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "TYR": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
}

# chi_angles_mask[restype][k] = 1 when residue type `restype` has torsion χ(k+1); restype order.
chi_angles_mask = [[float(k < len(chi_angles_atoms[restype_1to3[r]])) for k in range(4)] for r in restypes]

# χ angles that are π-periodic because the atoms they place are symmetric (ASP χ2, GLU χ3,
# PHE χ2, TYR χ2); the last row is UNK.
_PI_PERIODIC_CHIS = {"ASP": 1, "GLU": 2, "PHE": 1, "TYR": 1}
chi_pi_periodic = [
    [float(_PI_PERIODIC_CHIS.get(restype_1to3[r]) == k) for k in range(4)] for r in restypes
] + [[0.0, 0.0, 0.0, 0.0]]

# Ideal atom positions (Å) of each residue type in the local frame of its rigid group. Groups:
# 0 backbone, 1 pre-ω (empty), 2 φ (only hydrogens, empty), 3 ψ, 4..7 χ1..χ4. A group's x axis
# points along its rotation axis and its y axis is chosen so that the atom defining the torsion
# lies in the xy plane with y > 0. Entries: (atom name, group index, position).
rigid_group_atom_positions = {
    "ALA": [
        ("N", 0, (-0.525, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.529, -0.774, -1.205)),
        ("O", 3, (0.627, 1.062, 0.000)),
    ],
    "ARG": [
        ("N", 0, (-0.524, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.524, -0.778, -1.209)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.616, 1.390, -0.000)),
        ("CD", 5, (0.564, 1.414, 0.000)),
        ("NE", 6, (0.539, 1.357, -0.000)),
        ("NH1", 7, (0.206, 2.301, 0.000)),
        ("NH2", 7, (2.078, 0.978, -0.000)),
        ("CZ", 7, (0.758, 1.093, -0.000)),
    ],
    "ASN": [
        ("N", 0, (-0.536, 1.357, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.531, -0.787, -1.200)),
        ("O", 3, (0.625, 1.062, 0.000)),
        ("CG", 4, (0.584, 1.399, 0.000)),
        ("ND2", 5, (0.593, -1.188, 0.001)),
        ("OD1", 5, (0.633, 1.059, 0.000)),
    ],
    "ASP": [
        ("N", 0, (-0.525, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, 0.000, -0.000)),
        ("CB", 0, (-0.526, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.593, 1.398, -0.000)),
        ("OD1", 5, (0.610, 1.091, 0.000)),
        ("OD2", 5, (0.592, -1.101, -0.003)),
    ],
    "CYS": [
        ("N", 0, (-0.522, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, 0.000)),
        ("CB", 0, (-0.519, -0.773, -1.212)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("SG", 4, (0.728, 1.653, 0.000)),
    ],
    "GLN": [
        ("N", 0, (-0.526, 1.361, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.779, -1.207)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.615, 1.393, 0.000)),
        ("CD", 5, (0.587, 1.399, -0.000)),
        ("NE2", 6, (0.593, -1.189, -0.001)),
        ("OE1", 6, (0.634, 1.060, 0.000)),
    ],
    "GLU": [
        ("N", 0, (-0.528, 1.361, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.526, -0.781, -1.207)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.615, 1.392, 0.000)),
        ("CD", 5, (0.600, 1.397, 0.000)),
        ("OE1", 6, (0.607, 1.095, -0.000)),
        ("OE2", 6, (0.589, -1.104, -0.001)),
    ],
    "GLY": [
        ("N", 0, (-0.572, 1.337, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.517, -0.000, -0.000)),
        ("O", 3, (0.626, 1.062, -0.000)),
    ],
    "HIS": [
        ("N", 0, (-0.527, 1.360, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.778, -1.208)),
        ("O", 3, (0.625, 1.063, 0.000)),
        ("CG", 4, (0.600, 1.370, -0.000)),
        ("CD2", 5, (0.889, -1.021, 0.003)),
        ("ND1", 5, (0.744, 1.160, -0.000)),
        ("CE1", 5, (2.030, 0.851, 0.002)),
        ("NE2", 5, (2.145, -0.466, 0.004)),
    ],
    "ILE": [
        ("N", 0, (-0.493, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.536, -0.793, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.534, 1.437, -0.000)),
        ("CG2", 4, (0.540, -0.785, -1.199)),
        ("CD1", 5, (0.619, 1.391, 0.000)),
    ],
    "LEU": [
        ("N", 0, (-0.520, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.773, -1.214)),
        ("O", 3, (0.625, 1.063, -0.000)),
        ("CG", 4, (0.678, 1.371, 0.000)),
        ("CD1", 5, (0.530, 1.430, -0.000)),
        ("CD2", 5, (0.535, -0.774, 1.200)),
    ],
    "LYS": [
        ("N", 0, (-0.526, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.524, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.619, 1.390, 0.000)),
        ("CD", 5, (0.559, 1.417, 0.000)),
        ("CE", 6, (0.560, 1.416, 0.000)),
        ("NZ", 7, (0.554, 1.387, 0.000)),
    ],
    "MET": [
        ("N", 0, (-0.521, 1.364, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.210)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("CG", 4, (0.613, 1.391, -0.000)),
        ("SD", 5, (0.703, 1.695, 0.000)),
        ("CE", 6, (0.320, 1.786, -0.000)),
    ],
    "PHE": [
        ("N", 0, (-0.518, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, -0.000)),
        ("CB", 0, (-0.525, -0.776, -1.212)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.377, 0.000)),
        ("CD1", 5, (0.709, 1.195, -0.000)),
        ("CD2", 5, (0.706, -1.196, 0.000)),
        ("CE1", 5, (2.102, 1.198, -0.000)),
        ("CE2", 5, (2.098, -1.201, -0.000)),
        ("CZ", 5, (2.794, -0.003, -0.001)),
    ],
    "PRO": [
        ("N", 0, (-0.566, 1.351, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, 0.000)),
        ("CB", 0, (-0.546, -0.611, -1.293)),
        ("O", 3, (0.621, 1.066, 0.000)),
        ("CG", 4, (0.382, 1.445, 0.000)),
        ("CD", 5, (0.477, 1.424, 0.000)),
    ],
    "SER": [
        ("N", 0, (-0.529, 1.360, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.518, -0.777, -1.211)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("OG", 4, (0.503, 1.325, 0.000)),
    ],
    "THR": [
        ("N", 0, (-0.517, 1.364, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, -0.000)),
        ("CB", 0, (-0.516, -0.793, -1.215)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG2", 4, (0.550, -0.718, -1.228)),
        ("OG1", 4, (0.472, 1.353, 0.000)),
    ],
    "TRP": [
        ("N", 0, (-0.521, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.212)),
        ("O", 3, (0.627, 1.062, 0.000)),
        ("CG", 4, (0.609, 1.370, -0.000)),
        ("CD1", 5, (0.824, 1.091, 0.000)),
        ("CD2", 5, (0.854, -1.148, -0.005)),
        ("CE2", 5, (2.186, -0.678, -0.007)),
        ("CE3", 5, (0.622, -2.530, -0.007)),
        ("NE1", 5, (2.140, 0.690, -0.004)),
        ("CH2", 5, (3.028, -2.890, -0.013)),
        ("CZ2", 5, (3.283, -1.543, -0.011)),
        ("CZ3", 5, (1.715, -3.389, -0.011)),
    ],
    "TYR": [
        ("N", 0, (-0.522, 1.362, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.776, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.382, -0.000)),
        ("CD1", 5, (0.716, 1.195, -0.000)),
        ("CD2", 5, (0.713, -1.194, -0.001)),
        ("CE1", 5, (2.107, 1.200, -0.002)),
        ("CE2", 5, (2.104, -1.201, -0.003)),
        ("OH", 5, (4.168, -0.002, -0.005)),
        ("CZ", 5, (2.791, -0.001, -0.003)),
    ],
    "VAL": [
        ("N", 0, (-0.494, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.533, -0.795, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.540, 1.429, -0.000)),
        ("CG2", 4, (0.533, -0.776, 1.203)),
    ],
}

# Atom names of the 14-slot (atom14) encoding of each residue type; "" marks an unused slot.
restype_name_to_atom14_names = {
    "ALA": ["N", "CA", "C", "O", "CB", "", "", "", "", "", "", "", "", ""],
    "ARG": ["N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2", "", "", ""],
    "ASN": ["N", "CA", "C", "O", "CB", "CG", "OD1", "ND2", "", "", "", "", "", ""],
    "ASP": ["N", "CA", "C", "O", "CB", "CG", "OD1", "OD2", "", "", "", "", "", ""],
    "CYS": ["N", "CA", "C", "O", "CB", "SG", "", "", "", "", "", "", "", ""],
    "GLN": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2", "", "", "", "", ""],
    "GLU": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2", "", "", "", "", ""],
    "GLY": ["N", "CA", "C", "O", "", "", "", "", "", "", "", "", "", ""],
    "HIS": ["N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2", "", "", "", ""],
    "ILE": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1", "", "", "", "", "", ""],
    "LEU": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "", "", "", "", "", ""],
    "LYS": ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ", "", "", "", "", ""],
    "MET": ["N", "CA", "C", "O", "CB", "CG", "SD", "CE", "", "", "", "", "", ""],
    "PHE": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "", "", ""],
    "PRO": ["N", "CA", "C", "O", "CB", "CG", "CD", "", "", "", "", "", "", ""],
    "SER": ["N", "CA", "C", "O", "CB", "OG", "", "", "", "", "", "", "", ""],
    "THR": ["N", "CA", "C", "O", "CB", "OG1", "CG2", "", "", "", "", "", "", ""],
    "TRP": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"],
    "TYR": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH", "", ""],
    "VAL": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "", "", "", "", "", "", ""],
    "UNK": ["", "", "", "", "", "", "", "", "", "", "", "", "", ""],
}

# Atom names that are equivalent under a symmetry of the side chain (Suppl. 1.9.3): swapping them
# gives the same structure. LEU, VAL and ARG ambiguities are resolved by geometry and not listed.
residue_atom_renaming_swaps = {
    "ASP": {"OD1": "OD2"},
    "GLU": {"OE1": "OE2"},
    "PHE": {"CD1": "CD2", "CE1": "CE2"},
    "TYR": {"CD1": "CD2", "CE1": "CE2"},
}

# Van der Waals radii (Å) by element.
van_der_waals_radius = {"C": 1.7, "N": 1.55, "O": 1.52, "S": 1.8}

# Peptide-bond geometry between residues (Engh & Huber): [general, proline] means and stddevs.
between_res_bond_length_c_n = [1.329, 1.341]
between_res_bond_length_stddev_c_n = [0.014, 0.016]
# cos of the C-N-CA angle (121.352 ± 2.315°) and of the CA-C-N angle (116.568 ± 1.995°).
between_res_cos_angles_c_n_ca = [-0.5203, 0.0353]
between_res_cos_angles_ca_c_n = [-0.4473, 0.0311]


class Bond(NamedTuple):
    atom1_name: str
    atom2_name: str
    length: float
    stddev: float


class BondAngle(NamedTuple):
    atom1_name: str
    atom2_name: str
    atom3name: str
    angle_rad: float
    stddev: float


def _parse_table_section(lines: list[str], start: int) -> tuple[list[list[str]], int]:
    """Rows of one '-'-terminated section of the stereochemistry table, after its header line."""
    rows = []
    i = start + 1
    while lines[i].strip() != "-":
        rows.append(lines[i].split())
        i += 1
    return rows, i + 1


@functools.cache
def load_stereo_chemical_props() -> tuple[
    dict[str, list[Bond]], dict[str, list[Bond]], dict[str, list[BondAngle]]
]:
    """Literature bond lengths and angles per residue (``stereo_chemical_props.txt``).

    Returns ``(residue_bonds, residue_virtual_bonds, residue_bond_angles)``, each keyed by the
    3-letter residue name (UNK maps to empty lists). A "virtual bond" is the distance between the
    outer atoms of a bond angle, from the law of cosines, with its standard deviation propagated
    from the two bond lengths and the angle assuming independent errors.
    """
    text = resources.files("af2cpu.common").joinpath("stereo_chemical_props.txt").read_text()
    lines = text.splitlines()
    bond_rows, next_line = _parse_table_section(lines, 0)
    while not lines[next_line].strip():
        next_line += 1
    angle_rows, _ = _parse_table_section(lines, next_line)

    residue_bonds: dict[str, list[Bond]] = collections.defaultdict(list)
    for atoms, resname, length, stddev in bond_rows:
        atom1, atom2 = atoms.split("-")
        residue_bonds[resname].append(Bond(atom1, atom2, float(length), float(stddev)))
    residue_bonds = {**residue_bonds, "UNK": []}

    residue_bond_angles: dict[str, list[BondAngle]] = collections.defaultdict(list)
    for atoms, resname, angle_deg, stddev_deg in angle_rows:
        atom1, atom2, atom3 = atoms.split("-")
        residue_bond_angles[resname].append(
            BondAngle(atom1, atom2, atom3, np.deg2rad(float(angle_deg)), np.deg2rad(float(stddev_deg)))
        )
    residue_bond_angles = {**residue_bond_angles, "UNK": []}

    residue_virtual_bonds = {}
    for resname, angles in residue_bond_angles.items():
        by_atoms = {frozenset((b.atom1_name, b.atom2_name)): b for b in residue_bonds[resname]}
        virtual = []
        for angle in angles:
            a = by_atoms[frozenset((angle.atom1_name, angle.atom2_name))]
            b = by_atoms[frozenset((angle.atom2_name, angle.atom3name))]
            gamma = angle.angle_rad
            length = np.sqrt(a.length**2 + b.length**2 - 2 * a.length * b.length * np.cos(gamma))
            # Partial derivatives of the length with respect to gamma, a and b.
            d_gamma = a.length * b.length * np.sin(gamma) / length
            d_a = (a.length - b.length * np.cos(gamma)) / length
            d_b = (b.length - a.length * np.cos(gamma)) / length
            stddev = np.sqrt((d_gamma * angle.stddev) ** 2 + (d_a * a.stddev) ** 2 + (d_b * b.stddev) ** 2)
            virtual.append(Bond(angle.atom1_name, angle.atom3name, length, stddev))
        residue_virtual_bonds[resname] = virtual
    return residue_bonds, residue_virtual_bonds, residue_bond_angles


def atom_id_to_type(atom_id: str) -> str:
    """Element of a standard protein atom name (``"CA"`` -> ``"C"``)."""
    if atom_id[:1] in ("C", "N", "O", "H", "S"):
        return atom_id[0]
    raise ValueError(f"atom name {atom_id!r} does not start with an element of a protein (C, N, O, H, S)")


# Heavy atoms of each residue type (no hydrogens, no OXT).
residue_atoms = {
    "ALA": ["C", "CA", "CB", "N", "O"],
    "ARG": ["C", "CA", "CB", "CG", "CD", "CZ", "N", "NE", "O", "NH1", "NH2"],
    "ASP": ["C", "CA", "CB", "CG", "N", "O", "OD1", "OD2"],
    "ASN": ["C", "CA", "CB", "CG", "N", "ND2", "O", "OD1"],
    "CYS": ["C", "CA", "CB", "N", "O", "SG"],
    "GLU": ["C", "CA", "CB", "CG", "CD", "N", "O", "OE1", "OE2"],
    "GLN": ["C", "CA", "CB", "CG", "CD", "N", "NE2", "O", "OE1"],
    "GLY": ["C", "CA", "N", "O"],
    "HIS": ["C", "CA", "CB", "CG", "CD2", "CE1", "N", "ND1", "NE2", "O"],
    "ILE": ["C", "CA", "CB", "CG1", "CG2", "CD1", "N", "O"],
    "LEU": ["C", "CA", "CB", "CG", "CD1", "CD2", "N", "O"],
    "LYS": ["C", "CA", "CB", "CG", "CD", "CE", "N", "NZ", "O"],
    "MET": ["C", "CA", "CB", "CG", "CE", "N", "O", "SD"],
    "PHE": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O"],
    "PRO": ["C", "CA", "CB", "CG", "CD", "N", "O"],
    "SER": ["C", "CA", "CB", "N", "O", "OG"],
    "THR": ["C", "CA", "CB", "CG2", "N", "O", "OG1"],
    "TRP": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE2", "CE3", "CZ2", "CZ3", "CH2", "N", "NE1", "O"],
    "TYR": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O", "OH"],
    "VAL": ["C", "CA", "CB", "CG1", "CG2", "N", "O"],
}

# HHblits' 22-letter alphabet (20 aa, X, gap) as used in MSA features, and AlphaFold2's mapping of
# other letters: B->D, J/O/U/Z->X-like codes exactly as the reference's HHBLITS_AA_TO_ID.
HHBLITS_AA_TO_ID = {
    "A": 0, "B": 2, "C": 1, "D": 2, "E": 3, "F": 4, "G": 5, "H": 6, "I": 7, "J": 20, "K": 8,
    "L": 9, "M": 10, "N": 11, "O": 20, "P": 12, "Q": 13, "R": 14, "S": 15, "T": 16, "U": 1,
    "V": 17, "W": 18, "X": 20, "Y": 19, "Z": 3, "-": 21,
}  # fmt: skip
# Index i of the HHblits alphabet ("ACDEFGHIKLMNPQRSTVWYX-") -> AlphaFold2 restype index (21 = gap).
_hhblits_alphabet = "ACDEFGHIKLMNPQRSTVWYX-"
MAP_HHBLITS_AATYPE_TO_OUR_AATYPE = tuple(
    restypes_with_x.index(c) if c in restypes_with_x else 21 for c in _hhblits_alphabet
)


def sequence_to_onehot(sequence: str, mapping: dict[str, int], map_unknown_to_x: bool = False) -> np.ndarray:
    """One-hot encode `sequence` with `mapping` (letter -> index); unknown letters map to X if asked."""
    num_entries = max(mapping.values()) + 1
    onehot = np.zeros((len(sequence), num_entries), dtype=np.int32)
    for i, letter in enumerate(sequence):
        if letter in mapping:
            idx = mapping[letter]
        elif map_unknown_to_x and "X" in mapping:
            idx = mapping["X"]
        else:
            raise ValueError(f"invalid character {letter!r} at position {i} of the sequence")
        onehot[i, idx] = 1
    return onehot


# Everything below is derived from the tables above.

restypes_with_x_and_gap = restypes + ["X", "-"]
ID_TO_HHBLITS_AA = dict(enumerate(_hhblits_alphabet))


def _make_standard_atom_mask() -> np.ndarray:
    """(21, 37) int32: 1 where residue type has that heavy atom (UNK row all 0)."""
    mask = np.zeros((restype_num + 1, atom_type_num), dtype=np.int32)
    for i, r in enumerate(restypes):
        for name in residue_atoms[restype_1to3[r]]:
            mask[i, atom_order[name]] = 1
    return mask


STANDARD_ATOM_MASK = _make_standard_atom_mask()


# (20, 4, 4) atom37 indices of the atoms defining each χ; 0 for χ a residue does not have.
chi_angles_atom_indices = np.array(
    [
        [[atom_order[a] for a in chi] for chi in chi_angles_atoms[restype_1to3[r]]]
        + [[0, 0, 0, 0]] * (4 - len(chi_angles_atoms[restype_1to3[r]]))
        for r in restypes
    ]
)

# (resname, atom name) -> [(χ index, position of the atom among the χ's four atoms), ...].
chi_groups_for_atom: dict[tuple[str, str], list[tuple[int, int]]] = collections.defaultdict(list)
for _resname, _chis in chi_angles_atoms.items():
    for _chi_index, _chi_atoms in enumerate(_chis):
        for _atom_index, _atom in enumerate(_chi_atoms):
            chi_groups_for_atom[(_resname, _atom)].append((_chi_index, _atom_index))
chi_groups_for_atom = dict(chi_groups_for_atom)


def _frame_from_axes(ex: np.ndarray, ey: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4x4 rigid transform whose x axis is along `ex`, whose y axis is `ey` made orthogonal to it
    (Gram–Schmidt), and whose origin is `origin`."""
    x = ex / np.linalg.norm(ex)
    y = ey - np.dot(ey, x) * x
    y = y / np.linalg.norm(y)
    z = np.cross(x, y)
    transform = np.eye(4)
    transform[:3, 0], transform[:3, 1], transform[:3, 2], transform[:3, 3] = x, y, z, origin
    return transform


def _make_rigid_group_tables() -> dict[str, np.ndarray]:
    """Per residue type (21 rows, UNK last and empty): atom -> rigid group, literature atom
    positions in atom37 and atom14 layouts, existence masks, and the default frame of every rigid
    group relative to its parent (backbone for ω, φ, ψ, χ1; the previous χ group for χ2..χ4)."""
    t = {
        "restype_atom37_to_rigid_group": np.zeros((21, 37), dtype=int),
        "restype_atom37_mask": np.zeros((21, 37), dtype=np.float32),
        "restype_atom37_rigid_group_positions": np.zeros((21, 37, 3), dtype=np.float32),
        "restype_atom14_to_rigid_group": np.zeros((21, 14), dtype=int),
        "restype_atom14_mask": np.zeros((21, 14), dtype=np.float32),
        "restype_atom14_rigid_group_positions": np.zeros((21, 14, 3), dtype=np.float32),
        "restype_rigid_group_default_frame": np.zeros((21, 8, 4, 4), dtype=np.float32),
    }
    for i, r in enumerate(restypes):
        resname = restype_1to3[r]
        for name, group, position in rigid_group_atom_positions[resname]:
            a37 = atom_order[name]
            a14 = restype_name_to_atom14_names[resname].index(name)
            t["restype_atom37_to_rigid_group"][i, a37] = group
            t["restype_atom37_mask"][i, a37] = 1
            t["restype_atom37_rigid_group_positions"][i, a37] = position
            t["restype_atom14_to_rigid_group"][i, a14] = group
            t["restype_atom14_mask"][i, a14] = 1
            t["restype_atom14_rigid_group_positions"][i, a14] = position

        pos = {name: np.array(p) for name, _, p in rigid_group_atom_positions[resname]}
        frames = t["restype_rigid_group_default_frame"][i]
        frames[0] = np.eye(4)  # backbone
        frames[1] = np.eye(4)  # pre-ω: no atoms are placed by it
        frames[2] = _frame_from_axes(pos["N"] - pos["CA"], np.array([1.0, 0.0, 0.0]), pos["N"])  # φ
        frames[3] = _frame_from_axes(pos["C"] - pos["CA"], pos["CA"] - pos["N"], pos["C"])  # ψ
        chis = chi_angles_atoms[resname]
        if chis:
            a0, a1, a2 = (pos[name] for name in chis[0][:3])
            frames[4] = _frame_from_axes(a2 - a1, a0 - a1, a2)
        # χ2..χ4 are expressed in the previous χ group, whose origin is the start of their axis.
        for k in range(1, len(chis)):
            axis_end = pos[chis[k][2]]
            frames[4 + k] = _frame_from_axes(axis_end, np.array([-1.0, 0.0, 0.0]), axis_end)
    return t


_rigid_group_tables = _make_rigid_group_tables()
restype_atom37_to_rigid_group = _rigid_group_tables["restype_atom37_to_rigid_group"]
restype_atom37_mask = _rigid_group_tables["restype_atom37_mask"]
restype_atom37_rigid_group_positions = _rigid_group_tables["restype_atom37_rigid_group_positions"]
restype_atom14_to_rigid_group = _rigid_group_tables["restype_atom14_to_rigid_group"]
restype_atom14_mask = _rigid_group_tables["restype_atom14_mask"]
restype_atom14_rigid_group_positions = _rigid_group_tables["restype_atom14_rigid_group_positions"]
restype_rigid_group_default_frame = _rigid_group_tables["restype_rigid_group_default_frame"]


def _make_atom14_atom37_maps() -> tuple[np.ndarray, np.ndarray]:
    """(21, 14) atom14 -> atom37 index and (21, 37) atom37 -> atom14 index; 0 where unused."""
    to37 = np.zeros((21, 14), dtype=np.int32)
    to14 = np.zeros((21, 37), dtype=np.int32)
    for i, r in enumerate(restypes):
        for a14, name in enumerate(restype_name_to_atom14_names[restype_1to3[r]]):
            if name:
                to37[i, a14] = atom_order[name]
                to14[i, atom_order[name]] = a14
    return to37, to14


restype_atom14_to_atom37, restype_atom37_to_atom14 = _make_atom14_atom37_maps()
# Atom existence per residue type: atom14 layout (from the atom14 names) and atom37 layout (from
# residue_atoms); the UNK row is all zeros.
restype_atom14_exists = np.array(
    [[float(bool(name)) for name in restype_name_to_atom14_names[n]] for n in resnames], dtype=np.float32
)
restype_atom37_exists = STANDARD_ATOM_MASK.astype(np.float32)


def _make_atom14_is_ambiguous() -> np.ndarray:
    """(21, 14) float32: 1 for atoms whose names are swapped by a side-chain symmetry."""
    ambiguous = np.zeros((21, 14), dtype=np.float32)
    for resname, swaps in residue_atom_renaming_swaps.items():
        names = restype_name_to_atom14_names[resname]
        for a, b in swaps.items():
            ambiguous[resname_to_idx[resname], names.index(a)] = 1.0
            ambiguous[resname_to_idx[resname], names.index(b)] = 1.0
    return ambiguous


restype_atom14_is_ambiguous = _make_atom14_is_ambiguous()


def make_atom14_dists_bounds(
    overlap_tolerance: float = 1.5, bond_length_tolerance_factor: float = 15
) -> dict[str, np.ndarray]:
    """Lower/upper bounds and stddevs (21, 14, 14) of intra-residue atom distances.

    Non-bonded pairs may not come closer than the sum of their van der Waals radii minus
    `overlap_tolerance`; bonded and angle-spanning ("virtual bond") pairs must stay within
    `bond_length_tolerance_factor` standard deviations of the literature length.
    """
    lower = np.zeros((21, 14, 14), np.float32)
    upper = np.zeros((21, 14, 14), np.float32)
    stddev = np.zeros((21, 14, 14), np.float32)
    bonds, virtual_bonds, _ = load_stereo_chemical_props()
    for i, r in enumerate(restypes):
        resname = restype_1to3[r]
        names = restype_name_to_atom14_names[resname]
        for a, name_a in enumerate(names):
            for b, name_b in enumerate(names):
                if name_a and name_b and a != b:
                    radius_sum = van_der_waals_radius[name_a[0]] + van_der_waals_radius[name_b[0]]
                    lower[i, a, b] = radius_sum - overlap_tolerance
                    upper[i, a, b] = 1e10
        for bond in bonds[resname] + virtual_bonds[resname]:
            a, b = names.index(bond.atom1_name), names.index(bond.atom2_name)
            for x, y in ((a, b), (b, a)):
                lower[i, x, y] = bond.length - bond_length_tolerance_factor * bond.stddev
                upper[i, x, y] = bond.length + bond_length_tolerance_factor * bond.stddev
                stddev[i, x, y] = bond.stddev
    return {"lower_bound": lower, "upper_bound": upper, "stddev": stddev}
