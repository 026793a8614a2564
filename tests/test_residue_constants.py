"""af2cpu's residue constants equal the tables of DeepMind's AlphaFold (the `reference` extra).

Every table the network, the template featurizer and the violation checks read is compared entry
by entry with ``alphafold.common.residue_constants`` (and, for the atom14/atom37 maps that
AlphaFold2 builds inside its data pipeline, with ``alphafold.model.all_atom_multimer``).
"""

from __future__ import annotations

import numpy as np
import pytest

from af2cpu.common import residue_constants as ours

ref = pytest.importorskip("alphafold.common.residue_constants", reason="needs the `reference` extra")
ref_aam = pytest.importorskip("alphafold.model.all_atom_multimer", reason="needs the `reference` extra")

pytestmark = pytest.mark.reference

PLAIN_TABLES = [
    "restypes", "restype_order", "restype_num", "unk_restype_index", "restypes_with_x",
    "restype_order_with_x", "restype_1to3", "restype_3to1", "unk_restype", "resnames",
    "resname_to_idx", "atom_types", "atom_order", "atom_type_num", "residue_atoms",
    "HHBLITS_AA_TO_ID", "ID_TO_HHBLITS_AA", "MAP_HHBLITS_AATYPE_TO_OUR_AATYPE",
    "restypes_with_x_and_gap", "ca_ca", "chi_angles_atoms", "chi_angles_mask", "chi_pi_periodic",
    "restype_name_to_atom14_names", "residue_atom_renaming_swaps", "van_der_waals_radius",
    "between_res_bond_length_c_n", "between_res_bond_length_stddev_c_n",
    "between_res_cos_angles_c_n_ca", "between_res_cos_angles_ca_c_n", "chi_groups_for_atom",
    "PROTEIN_CHAIN", "POLYMER_CHAIN",
]  # fmt: skip

ARRAY_TABLES = [
    "STANDARD_ATOM_MASK", "chi_angles_atom_indices",
    "restype_atom37_to_rigid_group", "restype_atom37_mask", "restype_atom37_rigid_group_positions",
    "restype_atom14_to_rigid_group", "restype_atom14_mask", "restype_atom14_rigid_group_positions",
]  # fmt: skip


@pytest.mark.parametrize("name", PLAIN_TABLES)
def test_table_equals_reference(name):
    assert getattr(ours, name) == getattr(ref, name)


def test_rigid_group_atom_positions_equal_reference():
    assert ours.rigid_group_atom_positions.keys() == ref.rigid_group_atom_positions.keys()
    for resname, atoms in ref.rigid_group_atom_positions.items():
        assert [(n, g, tuple(p)) for n, g, p in ours.rigid_group_atom_positions[resname]] == [
            (n, g, tuple(p)) for n, g, p in atoms
        ], resname


@pytest.mark.parametrize("name", ARRAY_TABLES)
def test_array_table_equals_reference(name):
    got, want = np.asarray(getattr(ours, name)), np.asarray(getattr(ref, name))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_default_frames_equal_reference():
    # Built from the same literature positions with the same Gram–Schmidt; measured max diff 0.
    np.testing.assert_allclose(
        ours.restype_rigid_group_default_frame, ref.restype_rigid_group_default_frame, atol=1e-6
    )


@pytest.mark.parametrize(
    "name, ref_name",
    [
        ("restype_atom14_to_atom37", "RESTYPE_ATOM14_TO_ATOM37"),
        ("restype_atom37_to_atom14", "RESTYPE_ATOM37_TO_ATOM14"),
        ("restype_atom14_exists", "RESTYPE_ATOM14_MASK"),
        ("restype_atom37_exists", "RESTYPE_ATOM37_MASK"),
        ("restype_atom14_is_ambiguous", "RESTYPE_ATOM14_IS_AMBIGUOUS"),
    ],
)
def test_atom14_atom37_maps_equal_reference(name, ref_name):
    np.testing.assert_array_equal(getattr(ours, name), getattr(ref_aam, ref_name))


def test_stereo_chemical_props_equal_reference():
    got, want = ours.load_stereo_chemical_props(), ref.load_stereo_chemical_props()
    for got_table, want_table in zip(got, want):
        assert got_table.keys() == want_table.keys()
        for resname in want_table:
            g, w = got_table[resname], want_table[resname]
            assert [x[:-2] for x in g] == [x[:-2] for x in w], resname
            np.testing.assert_allclose(
                np.reshape([x[-2:] for x in g], (-1, 2)), np.reshape([x[-2:] for x in w], (-1, 2)), rtol=1e-12
            )


def test_atom14_distance_bounds_equal_reference():
    got, want = ours.make_atom14_dists_bounds(), ref.make_atom14_dists_bounds()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
