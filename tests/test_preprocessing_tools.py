"""Search-tool wrappers: the real binaries, AlphaFold2's flags, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from af2cpu.errors import DatabaseError, ToolError
from af2cpu.preprocessing import parsers, tools

DATA = Path(__file__).parent / "data" / "preprocessing"
QUERY = DATA / "queries" / "HBB_HUMAN"
GLOBINS = DATA / "queries" / "globins45.fa"


def test_jackhmmer_with_alphafold_flags_reproduces_the_recorded_msa(tmp_path):
    run = tools.jackhmmer(QUERY, GLOBINS, tmp_path / "uniref90_hits.sto", cpus=1)
    assert run.path.read_text() == (DATA / "stockholm" / "hbb_vs_globins45.sto").read_text()
    assert run.tool == "jackhmmer" and run.version == "3.3.2"
    assert [p.name for p in tmp_path.iterdir()] == ["uniref90_hits.sto"]  # no scratch left behind


def test_jackhmmer_output_is_capped_while_streaming(tmp_path):
    run = tools.jackhmmer(QUERY, GLOBINS, tmp_path / "capped.sto", cpus=1, max_sequences=5)
    msa = parsers.read_stockholm(run.path)
    assert len(msa) == 5
    assert (
        msa.sequences[0] == parsers.read_stockholm(DATA / "stockholm" / "hbb_vs_globins45.sto").sequences[0]
    )


def test_failing_tool_raises_with_its_stderr_tail(tmp_path):
    not_fasta = DATA / "hhr" / "allx.hhr"
    with pytest.raises(
        ToolError, match=r"jackhmmer failed with exit status \d+.*stderr tail:\n.*(?i:parse|format)"
    ):
        tools.jackhmmer(QUERY, not_fasta, tmp_path / "out.sto", cpus=1)
    assert not (tmp_path / "out.sto").exists()


def test_tool_timeout_is_reported(tmp_path):
    never_written = tmp_path / "db.fasta"
    os.mkfifo(never_written)  # jackhmmer blocks opening it
    with pytest.raises(ToolError, match=r"jackhmmer timed out after 0.5 s"):
        tools.run_tool("jackhmmer", ["-o", "/dev/null", QUERY, never_written], timeout=0.5)


def test_missing_database_is_named_with_the_fix(tmp_path):
    with pytest.raises(DatabaseError, match=r"nowhere.fasta does not exist; download it"):
        tools.jackhmmer(QUERY, tmp_path / "nowhere.fasta", tmp_path / "out.sto", cpus=1)
    with pytest.raises(DatabaseError, match=r"pdb70 not found"):
        tools.hhsearch(QUERY, [tmp_path / "pdb70"], tmp_path / "out.hhr", cpus=1)


def test_missing_binary_is_named_with_the_fix(tmp_path):
    with pytest.raises(ToolError, match=r"not an executable file; install it"):
        tools.jackhmmer(QUERY, GLOBINS, tmp_path / "out.sto", cpus=1, binary=str(tmp_path / "jackhmmer"))


def test_kalign_aligns_into_a3m():
    a3m = tools.kalign(["VHLTPEEKSAVTALWGKV", "VHLTPEEKTAVNALWGKV"])
    msa = parsers.parse_a3m(a3m)
    assert msa.descriptions == ["sequence 1", "sequence 2"]
    assert [s.replace("-", "") for s in msa.sequences] == ["VHLTPEEKSAVTALWGKV", "VHLTPEEKTAVNALWGKV"]
    with pytest.raises(ToolError, match="at least 6 residues"):
        tools.kalign(["ACD", "ACDEFG"])


def test_tblout_e_values_equal_reference(tmp_path):
    ref_parsers = pytest.importorskip("alphafold.data.parsers")
    tblout = tmp_path / "hits.tbl"
    tools.run_tool(
        "jackhmmer",
        ["-o", "/dev/null", "--tblout", tblout, *tools.JACKHMMER_FLAGS, "--cpu", "1", QUERY, GLOBINS],
        60,
    )
    text = tblout.read_text()
    e_values = parsers.parse_tblout_e_values(text)
    assert len(e_values) > 30 and e_values["query"] == 0
    assert e_values == ref_parsers.parse_e_values_from_tblout(text)
