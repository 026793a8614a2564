"""af2cpu.relax.violations: AlphaFold2's bond, angle and clash checks, per residue."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from af2cpu.common import protein
from af2cpu.common import residue_constants as rc
from af2cpu.relax.violations import find_violations

STRUCTURES = Path(__file__).parent / "data" / "structures"
FIELDS = ["atom_positions", "aatype", "atom_mask", "residue_index", "chain_index", "b_factors"]


def load(name: str) -> protein.Protein:
    return protein.from_pdb_string((STRUCTURES / name).read_text())


def moved(prot: protein.Protein, residue: int, atom: str, to) -> protein.Protein:
    pos = prot.atom_positions.copy()
    pos[residue, rc.atom_order[atom]] = to
    return dataclasses.replace(prot, atom_positions=pos)


@pytest.mark.parametrize("name", ["1ubi.pdb", "1a8o.pdb", "2gtl_A.pdb"])
def test_experimental_structures_have_no_violations(name):
    v = find_violations(load(name))
    assert v.num_residues == 0 and v.num_bond == v.num_angle == v.num_clash == 0


def test_stretched_peptide_bond_counts_for_both_residues():
    prot = load("1ubi.pdb")
    c = prot.atom_positions[9, rc.atom_order["C"]]
    n = prot.atom_positions[10, rc.atom_order["N"]]
    # 12 standard deviations (0.014 Å each) allow 0.168 Å; stretch the C-N bond by 0.4 Å.
    stretched = moved(prot, 9, "C", c + (c - n) / np.linalg.norm(c - n) * 0.4)
    v = find_violations(stretched)
    assert v.bond[10] == 1 and v.bond[9] >= 1
    assert set(np.flatnonzero(v.mask)) <= {9, 10}


def test_clash_between_residues_is_counted_for_both():
    prot = load("1ubi.pdb")
    target = prot.atom_positions[43, rc.atom_order["CA"]]
    # C-C may come to 1.7 + 1.7 - 1.5 = 1.9 Å; put LYS 6 NZ (N: 1.55) 1.2 Å from ILE 44 CA.
    v = find_violations(moved(prot, 5, "NZ", target + np.array([1.2, 0.0, 0.0])))
    assert v.clash[5] >= 1 and v.clash[43] >= 1
    assert v.num_clash >= 1


def test_peptide_geometry_is_not_checked_across_a_numbering_gap():
    prot = load("1ubi.pdb")
    keep = np.ones(prot.num_residues, bool)
    keep[30:33] = False  # residues 31-33 missing: 30 and 34 are not bonded
    gapped = protein.Protein(**{f: getattr(prot, f)[keep] for f in FIELDS})
    assert find_violations(gapped).num_residues == 0


def test_disulfide_sulfurs_do_not_clash():
    prot = load("2gtl_A.pdb")
    cys = np.flatnonzero(prot.aatype == rc.restype_order["C"])
    assert len(cys) >= 2
    sg = rc.atom_order["SG"]
    a, b = cys[0], cys[-1]
    # 2.05 Å is a disulfide bond, far below the 1.8 + 1.8 - 1.5 = 2.1 Å clash limit for other pairs.
    near = moved(prot, b, "SG", prot.atom_positions[a, sg] + np.array([2.05, 0.0, 0.0]))
    v = find_violations(near)
    assert v.clash[a] == 0


@pytest.mark.reference
def test_per_residue_mask_matches_reference_on_perturbed_structures():
    amber_minimize = pytest.importorskip("alphafold.relax.amber_minimize")
    ref_protein = pytest.importorskip("alphafold.common.protein")
    rng = np.random.default_rng(0)
    checked = 0
    # One structure: the reference runs JAX op by op and compiles each op anew for every shape.
    for name in ["1ubi.pdb"]:
        prot = load(name)
        for noise in (0.04, 0.05, 0.08):
            pos = prot.atom_positions + rng.normal(scale=noise, size=prot.atom_positions.shape)
            pos = pos * prot.atom_mask[..., None]
            noisy = dataclasses.replace(prot, atom_positions=pos)
            # A clash on top of the noise.
            noisy = moved(noisy, 5, "CB", noisy.atom_positions[40, rc.atom_order["CA"]] + 1.0)
            ours = find_violations(noisy)
            theirs, _ = amber_minimize.find_violations(
                ref_protein.Protein(**{f: getattr(noisy, f) for f in FIELDS})
            )
            expected = np.asarray(theirs["total_per_residue_violations_mask"]) > 0
            np.testing.assert_array_equal(ours.mask, expected, err_msg=f"{name} noise {noise}")
            assert 0 < expected.sum() < prot.num_residues
            checked += 1
    assert checked == 3
