"""Parsers of search-tool outputs: equal to AlphaFold2's on real files, precise on malformed ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from af2cpu.preprocessing import parsers

DATA = Path(__file__).parent / "data" / "preprocessing"
HHR_FILES_AF2_READS = [
    "2uvo_hhblits_emptytable.hhr",
    "4p79_hhsearch_server_NOssm.hhr",
    "4y9h_hhsearch_server_NOssm.hhr",
    "7rbx_A_hhsearch_trunc.hhr",
    "hhpred_9590198.hhr",
    "hhsearch_q9bsu1_uniclust_w_ss_pfamA_30.hhr",
]
STOCKHOLM_FILES = ["hbb_vs_globins45.sto", "globins4.sto", "fn3.sto", "Pkinase.sto"]


@pytest.fixture(scope="module")
def ref_parsers():
    return pytest.importorskip("alphafold.data.parsers")


@pytest.mark.reference
@pytest.mark.parametrize("name", HHR_FILES_AF2_READS)
def test_hhr_hits_equal_reference(ref_parsers, name):
    text = (DATA / "hhr" / name).read_text()
    expected = [dataclasses.asdict(h) for h in ref_parsers.parse_hhr(text)]
    assert [dataclasses.asdict(h) for h in parsers.read_hhr(DATA / "hhr" / name)] == expected


@pytest.mark.parametrize(
    "name, line",
    [("2uvo_hhsearch.hhr", 45), ("allx.hhr", 23), ("2uvo_hhblits_onlyheader.hhr", 8)],
)
def test_malformed_hhr_names_file_and_line(name, line):
    path = DATA / "hhr" / name
    with pytest.raises(parsers.MsaFormatError, match=rf"{name}:{line}:"):
        parsers.read_hhr(path)


def test_corrupted_hhr_alignment_row_is_reported(tmp_path):
    lines = (DATA / "hhr" / "4p79_hhsearch_server_NOssm.hhr").read_text().splitlines()
    index = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("Q ") and "Consensus" not in line and "ss_" not in line
    )
    lines[index] = lines[index][:17] + "12 ABC?DEF 18 (40)"
    bad = tmp_path / "bad.hhr"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(parsers.MsaFormatError, match=rf"bad.hhr:{index + 1}: cannot read the alignment row"):
        parsers.read_hhr(bad)


@pytest.mark.reference
@pytest.mark.parametrize("name", STOCKHOLM_FILES)
def test_stockholm_msa_equals_reference(ref_parsers, name):
    text = (DATA / "stockholm" / name).read_text()
    expected = ref_parsers.parse_stockholm(text)
    ours = parsers.read_stockholm(DATA / "stockholm" / name)
    assert list(ours.sequences) == expected.sequences
    assert [list(r) for r in ours.deletion_matrix] == expected.deletion_matrix
    assert list(ours.descriptions) == expected.descriptions
    assert parsers.stockholm_to_a3m(text) == ref_parsers.convert_stockholm_to_a3m(text)
    assert parsers.deduplicate_stockholm(text) == ref_parsers.deduplicate_stockholm_msa(text)


@pytest.mark.reference
def test_template_query_preparation_equals_reference(ref_parsers):
    text = (DATA / "stockholm" / "hbb_vs_globins45.sto").read_text()
    expected = ref_parsers.convert_stockholm_to_a3m(
        ref_parsers.remove_empty_columns_from_stockholm_msa(ref_parsers.deduplicate_stockholm_msa(text))
    )
    ours = parsers.stockholm_to_a3m(
        parsers.remove_empty_columns_from_stockholm(parsers.deduplicate_stockholm(text))
    )
    assert ours == expected
    a3m = ref_parsers.parse_a3m(expected)
    mine = parsers.parse_a3m(ours)
    assert (list(mine.sequences), [list(r) for r in mine.deletion_matrix]) == (
        a3m.sequences,
        a3m.deletion_matrix,
    )


@pytest.mark.reference
@pytest.mark.parametrize("cap", [1, 10, 30])
def test_streamed_truncation_equals_reference(ref_parsers, tmp_path, cap):
    src = DATA / "stockholm" / "hbb_vs_globins45.sto"
    kept = parsers.truncate_stockholm(src, tmp_path / "capped.sto", cap)
    assert kept == cap
    assert (tmp_path / "capped.sto").read_text() == ref_parsers.truncate_stockholm_msa(str(src), cap)
    expected = ref_parsers.parse_stockholm(ref_parsers.truncate_stockholm_msa(str(src), cap))
    assert list(parsers.read_stockholm(src, max_sequences=cap).sequences) == expected.sequences


def test_duplicated_stockholm_name_is_rejected_with_line():
    # A real Pfam seed with one sequence listed twice; HMMER rejects it too.
    with pytest.raises(
        parsers.MsaFormatError, match=r"msa_Cys_knot.sth:53: sequence name 'GTHB2_ONCKE/26-130'"
    ):
        parsers.read_stockholm(DATA / "stockholm" / "msa_Cys_knot.sth")


def test_stockholm_row_with_extra_field_is_rejected(tmp_path):
    lines = (DATA / "stockholm" / "globins4.sto").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    lines[index] += " EXTRA"
    bad = tmp_path / "bad.sto"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        parsers.MsaFormatError, match=rf"bad.sto:{index + 1}: expected '<name> <aligned sequence>'"
    ):
        parsers.read_stockholm(bad)


def test_a3m_deletions_and_bad_rows():
    msa = parsers.parse_a3m(">q\nAC-D\n>h1 x\nAabC-D\n>h2\nA-CcD\n")
    assert msa.sequences == ["AC-D", "AC-D", "A-CD"]
    assert msa.deletion_matrix == [[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(
        parsers.MsaFormatError, match=r"x.a3m:3: record 'h1' has 2 match columns, the query has 3"
    ):
        parsers.parse_a3m(">q\nACD\n>h1\nAC\n", source="x.a3m")
    with pytest.raises(parsers.MsaFormatError, match=r"x.a3m:1: sequence data before"):
        parsers.parse_a3m("ACD\n", source="x.a3m")


def test_species_ids_from_uniprot_names():
    assert parsers.species_id("sp|P69905|HBA_HUMAN/1-142 Hemoglobin") == "HUMAN"
    assert parsers.species_id("tr|A0A146SKV9|A0A146SKV9_FUNHE") == "FUNHE"
    assert parsers.species_id("UniRef90_P69905") == ""
    assert parsers.species_id("") == ""
