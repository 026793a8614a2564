"""FASTA input: validated targets with ids that are safe, unique folder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from af2cpu.errors import InputError
from af2cpu.preprocessing import features
from af2cpu.preprocessing.inputs import (
    MAX_ID_LENGTH,
    is_safe_id,
    parse_fasta_batch,
    parse_fasta_targets,
    read_fasta_targets,
)

DATA = Path(__file__).parent / "data" / "preprocessing"


def test_real_query_is_read_with_header_kept():
    (target,) = read_fasta_targets(DATA / "queries" / "HBB_HUMAN")
    assert target.id == "HBB_HUMAN"
    assert target.description == "HBB_HUMAN Human beta hemoglobin."
    assert target.sequence.startswith("VHLTPEEKSAVTALWGKV") and len(target.sequence) == 146


def test_many_records_get_unique_ids():
    targets = read_fasta_targets(DATA / "queries" / "globins45.fa")
    assert len(targets) == 45
    assert len({t.id.lower() for t in targets}) == 45


@pytest.mark.parametrize(
    "header",
    ["../../etc/passwd", "/abs/path", "..", ".hidden", "a b/c", "x" * 300, "sp|P69905|HBA_HUMAN", ""],
)
def test_ids_can_never_escape_the_output_folder(header):
    (target,) = parse_fasta_targets(f">{header}\nACDE\n")
    assert is_safe_id(target.id)
    assert "/" not in target.id and not target.id.startswith(".") and len(target.id) <= MAX_ID_LENGTH
    assert target.description == header.strip()


def test_duplicate_ids_are_made_unique_case_insensitively():
    targets = parse_fasta_targets(">a\nACD\n>A\nACD\n>a\nACD\n")
    assert [t.id for t in targets] == ["a", "A_2", "a_3"]


def test_sequence_is_upper_cased_and_whitespace_removed():
    (target,) = parse_fasta_targets(">q\nac de\n fg\t\n")
    assert target.sequence == "ACDEFG"


def test_rare_letters_are_kept_and_encoded_as_x_like_alphafold():
    (target,) = parse_fasta_targets(">q\nACUZB\n")
    assert target.sequence == "ACUZB"
    aatype = features.sequence_features(target.sequence, target.description)["aatype"]
    assert np.argmax(aatype, axis=-1).tolist() == [0, 4, 20, 20, 20]


@pytest.mark.parametrize(
    "text, message",
    [
        (">a\nACD\n>b\n\n", r"in.fa:3: record 2 \('b'\) has an empty sequence"),
        (">a\nAC*\n", r"in.fa:1: record 1 \('a'\) contains '\*'"),
        (">a\nAC-D1\n", r"contains '-1'"),
        ("ACD\n", r"in.fa:1: sequence data before the first '>'"),
        ("", r"no FASTA records"),
    ],
)
def test_bad_records_are_named(text, message):
    with pytest.raises(InputError, match=message):
        parse_fasta_targets(text, source="in.fa")


def test_over_long_sequence_is_rejected():
    with pytest.raises(InputError, match=r"is 11 residues long, more than the limit of 10"):
        parse_fasta_targets(">a\n" + "A" * 11 + "\n", max_length=10)


def test_batch_keeps_valid_records_and_names_invalid_ones():
    from af2cpu.preprocessing.inputs import parse_fasta_batch

    targets, errors = parse_fasta_batch(">a\nACD\n>b\nAC*\n>c\n\n>a\nMKV\n", source="batch.fa")
    assert [(t.id, t.sequence) for t in targets] == [("a", "ACD"), ("a_2", "MKV")]
    assert [str(e).split(":")[:2] for e in errors] == [["batch.fa", "3"], ["batch.fa", "5"]]


# --- complexes ----------------------------------------------------------------------------------


def test_colon_splits_a_record_into_chains_and_a_batch_mixes_monomers_and_complexes():
    text = ">mono one\nACDE\n>hetero two\nACDE:\nFGHI\n>homo three\nKLMN:KLMN\n"
    mono, hetero, homo = parse_fasta_targets(text)
    assert not mono.is_complex and mono.chains[0].id == "A" and mono.sequence == "ACDE"
    assert [(c.id, c.sequence, c.description) for c in hetero.chains] == [
        ("A", "ACDE", "hetero two"), ("B", "FGHI", "hetero two")]
    assert hetero.sequence == "ACDE:FGHI" and hetero.num_residues == 8
    assert [c.id for c in homo.unique_chains()] == ["A"] and homo.is_complex


def test_complex_flag_reads_the_whole_file_as_one_complex_keeping_each_header():
    (target,) = parse_fasta_targets(">alpha first\nACDE\n>beta second\nFGHI:ACDE\n", complex=True)
    assert target.id == "alpha" and target.description == "alpha first"
    assert [(c.id, c.sequence, c.description) for c in target.chains] == [
        ("A", "ACDE", "alpha first"), ("B", "FGHI", "beta second"), ("C", "ACDE", "beta second")]
    assert [c.sequence for c in target.unique_chains()] == ["ACDE", "FGHI"]


@pytest.mark.parametrize("sequence, message", [
    ("ACDE::FGHI", "record 2 ('cplx') chain B has an empty sequence (two ':' in a row"),
    (":ACDE", "record 2 ('cplx') chain A has an empty sequence"),
    ("ACDE:FGHI:", "record 2 ('cplx') ends with ':'"),
    ("ACDE:FG1I", "record 2 ('cplx') chain B contains '1'"),
])
def test_bad_chains_are_one_line_errors_naming_record_and_chain(sequence, message):
    targets, errors = parse_fasta_batch(f">ok\nACDE\n>cplx\n{sequence}\n", "in.fasta")
    assert [t.id for t in targets] == ["ok"]
    (error,) = errors
    assert message in str(error) and str(error).startswith("in.fasta:3:")
    assert "\n" not in str(error) and error.record_id == "cplx"


def test_a_complex_longer_than_the_limit_is_refused_with_its_total():
    _, (error,) = parse_fasta_batch(">big\nACDE:FGHI\n", max_length=6)
    assert "2 chains of 8 residues together, more than the limit of 6" in str(error)
