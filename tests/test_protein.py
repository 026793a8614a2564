"""af2cpu.common.protein: reading PDB, writing PDB exactly as AlphaFold2 does, writing mmCIF."""

import io
from pathlib import Path

import numpy as np
import pytest

from af2cpu.common import protein
from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError

STRUCTURES = Path(__file__).parent / "data" / "structures"
FIELDS = ["atom_positions", "aatype", "atom_mask", "residue_index", "chain_index", "b_factors"]


def read(name: str) -> str:
    return (STRUCTURES / name).read_text()


def two_chain_protein() -> protein.Protein:
    """1UBI and 1A8O side by side as chains A and B."""
    a = protein.from_pdb_string(read("1ubi.pdb"))
    b = protein.from_pdb_string(read("1a8o.pdb"))
    parts = {f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in FIELDS}
    parts["chain_index"] = np.concatenate([np.zeros(a.num_residues, int), np.ones(b.num_residues, int)])
    return protein.Protein(**parts)


def atom_line(
    serial, name, resname, chain, number, xyz, occupancy=1.0, b=10.0, record="ATOM", icode=" ", alt=" "
):
    name = name if len(name) == 4 else f" {name}"
    return (
        f"{record:<6}{serial:>5} {name:<4}{alt}{resname:>3} {chain}{number:>4}{icode}   "
        f"{xyz[0]:>8.3f}{xyz[1]:>8.3f}{xyz[2]:>8.3f}{occupancy:>6.2f}{b:>6.2f}          {name.strip()[0]:>2}"
    )


@pytest.mark.parametrize("name", ["1ubi.pdb", "1a8o.pdb", "2gtl_A.pdb"])
def test_real_structures_read_every_residue(name):
    parsed = protein.parse_pdb(read(name))
    prot = parsed.protein
    expected = {"1ubi.pdb": 76, "1a8o.pdb": 70, "2gtl_A.pdb": 147}[name]
    assert prot.num_residues == expected
    assert parsed.chain_ids == ["A"]
    assert np.all(prot.atom_mask[:, rc.atom_order["CA"]] == 1)
    assert not np.any(prot.aatype == rc.unk_restype_index)


def test_to_pdb_matches_reference_text_for_the_same_arrays():
    ref_protein = pytest.importorskip("alphafold.common.protein")
    for prot in [protein.from_pdb_string(read("2gtl_A.pdb")), two_chain_protein()]:
        ours = protein.to_pdb(prot)
        theirs = ref_protein.to_pdb(ref_protein.Protein(**{f: getattr(prot, f) for f in FIELDS}))
        assert ours == theirs


def test_to_pdb_writes_unknown_residues_as_unk_like_the_reference():
    ref_protein = pytest.importorskip("alphafold.common.protein")
    prot = protein.from_pdb_string(read("1ubi.pdb"))
    aatype = prot.aatype.copy()
    aatype[3] = rc.unk_restype_index
    prot = protein.Protein(**{**{f: getattr(prot, f) for f in FIELDS}, "aatype": aatype})
    ours = protein.to_pdb(prot)
    assert " UNK A   4 " in ours
    assert ours == ref_protein.to_pdb(ref_protein.Protein(**{f: getattr(prot, f) for f in FIELDS}))


def test_parse_matches_reference_parser_on_protein_records():
    ref_protein = pytest.importorskip("alphafold.common.protein")
    # The reference reads waters as UNK residues; compare on the protein records only.
    text = "".join(line + "\n" for line in read("1ubi.pdb").splitlines() if line.startswith("ATOM"))
    ours, theirs = protein.from_pdb_string(text), ref_protein.from_pdb_string(text)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(ours, field), getattr(theirs, field), atol=1e-5, err_msg=field)


def test_pdb_round_trip_keeps_every_array():
    prot = two_chain_protein()
    back = protein.from_pdb_string(protein.to_pdb(prot))
    np.testing.assert_allclose(back.atom_positions, prot.atom_positions, atol=5e-4)
    np.testing.assert_allclose(back.b_factors, prot.b_factors, atol=5e-3)
    for field in ("aatype", "atom_mask", "residue_index", "chain_index"):
        np.testing.assert_array_equal(getattr(back, field), getattr(prot, field))


def test_selenomethionine_is_read_as_methionine_with_sd():
    parsed = protein.parse_pdb(read("1a8o.pdb"))
    mse = [i for i, n in enumerate(parsed.residue_names) if n == "MSE"]
    assert mse, "1A8O has selenomethionines"
    prot = parsed.protein
    assert np.all(prot.aatype[mse] == rc.restype_order["M"])
    assert np.all(prot.atom_mask[mse, rc.atom_order["SD"]] == 1)


def test_heterogens_are_skipped_and_listed():
    assert protein.parse_pdb(read("2gtl_A.pdb")).skipped_heterogens == ["CMO A 161", "HEM A 160"]
    waters = protein.parse_pdb(read("1ubi.pdb")).skipped_heterogens
    assert len(waters) > 50 and all(w.startswith("HOH A ") for w in waters)


def test_alternative_locations_keep_the_most_occupied():
    lines = [
        atom_line(1, "N", "GLY", "A", 1, (0, 0, 0)),
        atom_line(2, "CA", "GLY", "A", 1, (1, 0, 0), occupancy=0.3, alt="A"),
        atom_line(3, "CA", "GLY", "A", 1, (2, 0, 0), occupancy=0.7, alt="B"),
        atom_line(4, "C", "GLY", "A", 1, (3, 0, 0)),
    ]
    prot = protein.from_pdb_string("\n".join(lines))
    assert prot.atom_positions[0, rc.atom_order["CA"], 0] == pytest.approx(2.0)


def test_chain_filter_reads_one_chain():
    text = protein.to_pdb(two_chain_protein())
    assert protein.from_pdb_string(text, chain_id="B").num_residues == 70
    with pytest.raises(InputError, match="no protein atoms in chain C"):
        protein.from_pdb_string(text, chain_id="C")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no protein atoms"),
        ("HEADER    nothing here\nEND\n", "no protein atoms"),
        (
            "\n".join(atom_line(i, "O", "HOH", "A", 100 + i, (0, 0, i), record="HETATM") for i in range(3)),
            "no protein atoms",
        ),
        (atom_line(1, "CA", "GLY", "A", 5, (0, 0, 0), icode="A"), "GLY 5A of chain A has an insertion code"),
        (
            "MODEL        1\n" + atom_line(1, "CA", "GLY", "A", 5, (0, 0, 0)) + "\nENDMDL\nMODEL        2\n",
            "several models",
        ),
        (
            atom_line(1, "CA", "GLY", "A", 5, (0, 0, 0)).replace("   0.000", "   x.xxx", 1),
            "line 1: cannot read",
        ),
    ],
)
def test_bad_pdb_text_raises_input_error(text, message):
    with pytest.raises(InputError, match=message):
        protein.parse_pdb(text)


def test_protein_rejects_inconsistent_shapes():
    prot = protein.from_pdb_string(read("1a8o.pdb"))
    with pytest.raises(ValueError, match="atom_mask has shape"):
        protein.Protein(**{**{f: getattr(prot, f) for f in FIELDS}, "atom_mask": prot.atom_mask[:-1]})


def test_mmcif_is_read_back_by_biopython_and_the_reference():
    from Bio.PDB import MMCIFParser

    prot = two_chain_protein()
    text = protein.to_mmcif(prot, "test")
    structure = MMCIFParser(QUIET=True).get_structure("t", io.StringIO(text))
    assert [c.id for c in structure[0]] == ["A", "B"]
    assert sum(1 for _ in structure.get_atoms()) == int(prot.atom_mask.sum())
    ref_protein = pytest.importorskip("alphafold.common.protein")
    back = ref_protein.from_mmcif_string(text)
    np.testing.assert_allclose(back.atom_positions, prot.atom_positions, atol=5e-4)
    np.testing.assert_allclose(back.b_factors, prot.b_factors, atol=5e-3)
    for field in ("aatype", "atom_mask", "residue_index", "chain_index"):
        np.testing.assert_array_equal(getattr(back, field), getattr(prot, field))


def test_mmcif_gives_identical_chains_one_entity_and_fills_numbering_gaps():
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    one = protein.from_pdb_string(read("1a8o.pdb"))
    keep = np.ones(one.num_residues, bool)
    keep[10:12] = False  # a numbering gap of two residues
    parts = {f: np.concatenate([getattr(one, f)[keep]] * 2) for f in FIELDS}
    parts["chain_index"] = np.repeat([0, 1], keep.sum())
    cif = MMCIF2Dict(io.StringIO(protein.to_mmcif(protein.Protein(**parts), "dimer")))
    assert cif["_entity.id"] == ["1"]
    assert cif["_struct_asym.entity_id"] == ["1", "1"]
    assert cif["_entity_poly.pdbx_strand_id"] == ["A,B"]
    numbers = [int(n) for n in cif["_entity_poly_seq.num"]]
    first, last = int(one.residue_index[0]), int(one.residue_index[-1])
    assert numbers == list(range(min(1, first), last + 1))
    gap = [cif["_entity_poly_seq.mon_id"][numbers.index(int(n))] for n in one.residue_index[~keep]]
    assert gap == ["UNK", "UNK"]


def test_mmcif_chain_ids_continue_after_z():
    assert [protein.mmcif_chain_id(n) for n in (1, 26, 27, 28, 53)] == ["A", "Z", "AA", "BA", "AB"]
