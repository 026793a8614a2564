"""FASTA input: validated targets with ids that are safe, unique folder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from af2cpu.errors import InputError
from af2cpu.preprocessing import features
from af2cpu.preprocessing.inputs import MAX_ID_LENGTH, is_safe_id, parse_fasta_targets, read_fasta_targets

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
