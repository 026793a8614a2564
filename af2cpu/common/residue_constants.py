"""Residue and atom constants of AlphaFold2 (Jumper et al. 2021, Suppl. 1.2.1 and Table 2).

These are facts about proteins and about AlphaFold2's conventions (alphabets, atom orders, ideal
geometry); every stage uses the same tables so that features, the network and the relaxer agree.
"""

from __future__ import annotations

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
