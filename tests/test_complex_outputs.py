"""A complex's outputs: plots with its chains, load_result's per-chain views, multi-chain PDB/mmCIF, the
relax report's inter-chain clashes. Built from a tiny real multimer example (tests/complex_target.py:
haemoglobin alpha and beta searched with the real jackhmmer against the mini UniProt, paired and
merged by af2cpu's multimer data path)."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import MMCIFParser, PDBParser
from Bio.PDB.MMCIF2Dict import MMCIF2Dict
from complex_target import (
    MODELS,
    complex_example,
    haemoglobin_sequences,
    search_pdb_seqres,
    search_uniprot,
    write_complex_target,
)

from af2cpu import chains, load_result, plots
from af2cpu.cli import relax as relax_cli
from af2cpu.common import protein
from af2cpu.layout import TargetDir
from af2cpu.relax import find_violations, violation_summary

STRUCTURES = Path(__file__).parent / "data" / "structures"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Each haemoglobin chain's real UniProt search: {sequence: Stockholm file}."""
    work = tmp_path_factory.mktemp("searches")
    alpha, beta = haemoglobin_sequences()
    return {alpha: search_uniprot(alpha, "alpha", work), beta: search_uniprot(beta, "beta", work)}


@pytest.fixture(scope="module")
def heterodimer(searched, tmp_path_factory):
    alpha, beta = haemoglobin_sequences()
    work = tmp_path_factory.mktemp("templates")
    pdb_hits = {seq: search_pdb_seqres(searched[seq], name, work) for seq, name in ((alpha, "alpha"), (beta, "beta"))}
    path = tmp_path_factory.mktemp("out") / "hb_ab"
    # 150 rows of each chain's hits: the merged MSA is padded to 512 rows.
    return path, write_complex_target(path, [("A", alpha), ("B", beta)], searched, np.random.default_rng(1),
                                      description="haemoglobin", max_rows=150, pdb_hits=pdb_hits)


@pytest.fixture(scope="module")
def homodimer(searched, tmp_path_factory):
    _, beta = haemoglobin_sequences()
    path = tmp_path_factory.mktemp("out") / "hb_bb"
    return path, write_complex_target(path, [("A", beta), ("B", beta)], searched, np.random.default_rng(2),
                                      description="beta homodimer")


def _rows_touching_chains(msa: np.ndarray, spans) -> np.ndarray:
    """(rows,) number of chains in which each row has a residue (not a gap)."""
    return sum((msa[:, c.residues] != plots.MSA_GAP).any(axis=1).astype(int) for c in spans)


# --- chains and paired rows ------------------------------------------------------------------------


def test_paired_rows_are_the_rows_with_residues_in_both_chains(heterodimer):
    _, written = heterodimer
    features = written["features"]
    spans = chains.chain_spans(features)
    real = chains.real_msa_rows(features)
    assert len(real) < len(features["msa"])  # the example is padded to 512 rows; padding rows are dropped
    touching = _rows_touching_chains(real, spans)
    paired = chains.paired_msa_rows(features)
    # Every paired row pairs a real alpha row with a real beta row; every unpaired row is one chain's.
    assert paired > 1 and np.all(touching[:paired] == 2) and np.all(touching[paired:] == 1)
    assert paired < len(real)


def test_a_homodimer_has_no_paired_rows_and_chains_keep_the_assemblys_order(searched, homodimer):
    _, written = homodimer
    assert chains.paired_msa_rows(written["features"]) == 0
    alpha, beta = haemoglobin_sequences()
    # Input chains A=beta, B=alpha, C=beta: AlphaFold-Multimer groups the copies, so structure chain B is input C.
    example, assembly = complex_example([("A", beta), ("B", alpha), ("C", beta)], searched)
    report = [{"id": c.chain_id, "asym_id": c.asym_id, "description": f"header {c.chain_id}",
               "searched_as": "A" if c.sequence == beta else "B"} for c in assembly]
    spans = chains.chain_spans(example, report)
    assert [(c.id, c.input_id, c.searched_as, c.length) for c in spans] == [
        ("A", "A", "A", len(beta)), ("B", "C", "A", len(beta)), ("C", "B", "B", len(alpha))]
    assert [c.sequence for c in spans] == [beta, beta, alpha]
    assert spans[1].description == "header C" and (spans[1].start, spans[2].end) == (len(beta), 2 * len(beta) + len(alpha))


# --- plots -------------------------------------------------------------------------------------------


def test_complex_plots_mark_chains_and_the_paired_block(heterodimer):
    path, written = heterodimer
    features = written["features"]
    spans = chains.chain_spans(features)
    boundary = spans[1].start + 0.5
    paired = chains.paired_msa_rows(features)
    written_plots = plots.write_target_plots(TargetDir(path), written["order"], "haemoglobin")
    assert [p.name for p in written_plots] == ["plddt.png", "pae.png", "msa_coverage.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written_plots)

    def vertical_lines(ax):
        return [line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1]

    def chain_labels(ax):
        return [[t.get_text() for t in child.get_xticklabels()] for child in ax.child_axes]

    pae = plots.plot_pae({m: written["outs"][m]["predicted_aligned_error"] for m in MODELS}, chains=spans)
    first = pae.axes[0]
    assert boundary in vertical_lines(first)
    assert boundary in [line.get_ydata()[0] for line in first.get_lines() if len(set(line.get_ydata())) == 1]
    assert chain_labels(first)[0] == ["A", "B"]

    plddt = plots.plot_plddt({m: written["outs"][m]["plddt"] for m in MODELS}, chains=spans)
    assert boundary in vertical_lines(plddt.axes[0]) and chain_labels(plddt.axes[0]) == [["A", "B"]]

    real = chains.real_msa_rows(features)
    coverage = plots.plot_msa_coverage(real, chains=spans, paired_rows=paired)
    ax = coverage.axes[0]
    image = ax.get_images()[0].get_array()
    assert image.shape == real.shape  # padding rows left out
    assert paired - 0.5 in [line.get_ydata()[0] for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    # The paired block is at the bottom: its rows have residues in both chains, the rows above in one.
    shown = ~np.ma.getmaskarray(image) & ~np.isnan(np.ma.filled(image, np.nan))
    assert shown[:paired, : spans[1].start].any(axis=1).all() and shown[:paired, spans[1].start:].any(axis=1).all()
    assert not (shown[paired:, : spans[1].start].any(axis=1) & shown[paired:, spans[1].start:].any(axis=1)).any()
    assert f"{paired} paired" in ax.get_title()


# --- load_result -------------------------------------------------------------------------------------


def test_load_result_gives_per_chain_views_and_iptm(heterodimer):
    path, written = heterodimer
    result = load_result(path)
    alpha, beta = haemoglobin_sequences()
    assert result.is_complex and result.sequence == f"{alpha}:{beta}"
    assert [(c.id, c.length, c.description) for c in result.chains] == [
        ("A", len(alpha), "haemoglobin chain A"), ("B", len(beta), "haemoglobin chain B")]
    best = written["order"][0]
    assert result.best_model == best
    out = written["outs"][best]
    per_chain = result.chain_plddt()
    np.testing.assert_array_equal(np.concatenate([per_chain["A"], per_chain["B"]]), out["plddt"])
    blocks = result.chain_pae(best)
    np.testing.assert_array_equal(blocks[("A", "B")], out["predicted_aligned_error"][: len(alpha), len(alpha):])
    assert blocks[("B", "A")].shape == (len(beta), len(alpha))
    assert result.iptm == pytest.approx({m: float(written["outs"][m]["iptm"]) for m in written["order"]})
    assert list(result.iptm) == written["order"]
    assert result.chain_msas["B"]["uniprot_hits.sto"][0] == beta
    assert list(result.msas) == ["A/pdb_hits.sto", "A/uniprot_hits.sto", "B/pdb_hits.sto", "B/uniprot_hits.sto"]
    # Each chain's hmmsearch hits against the mini pdb_seqres (first the 2gtl globins), aligned to that chain.
    hits = result.chain_template_hits
    assert len(hits["A"]) > 10 and len(hits["B"]) > 10
    for chain, sequence in (("A", alpha), ("B", beta)):
        assert all(hit.name.startswith("2gtl_") for hit in hits[chain][:6])
        for hit in hits[chain]:
            aligned = [(q, i) for q, i in zip(hit.query, hit.indices_query) if i >= 0]
            assert all(sequence[i] == q for q, i in aligned)
    assert "chains: A (141), B (146)" in repr(result)
    assert result.summary().iptm == pytest.approx(float(out["iptm"]))
    with pytest.raises(KeyError, match="no chain 'C'"):
        result.chain("C")
    assert result.chain("B").input_id == "B" and result.chain("B").sequence == beta


def test_load_result_maps_a_homomers_copies_to_one_search(homodimer):
    path, _ = homodimer
    result = load_result(path)
    assert [(c.id, c.searched_as) for c in result.chains] == [("A", "A"), ("B", "A")]
    assert list(result.chain_msas["B"]) == ["uniprot_hits.sto"]
    assert result.chain_msas["B"]["uniprot_hits.sto"] == result.chain_msas["A"]["uniprot_hits.sto"]
    assert result.plot_msa_coverage().axes[0].get_images()[0].get_array().shape[0] == len(
        chains.real_msa_rows(result.features))


# --- structure files ------------------------------------------------------------------------------


def test_ranked_pdb_and_mmcif_have_chains_numbering_and_plddt(heterodimer):
    path, written = heterodimer
    folder = TargetDir(path)
    spans = chains.chain_spans(written["features"])
    plddt = written["outs"][written["order"][0]]["plddt"]
    pdb_path, cif_path = folder.ranked(0)
    text = pdb_path.read_text()
    assert sum(line.startswith("TER") for line in text.splitlines()) == 2
    for structure in (PDBParser(QUIET=True).get_structure("p", pdb_path),
                      MMCIFParser(QUIET=True).get_structure("c", cif_path)):
        model = structure[0]
        assert [c.id for c in model] == ["A", "B"]
        for span in spans:
            residues = list(model[span.id])
            assert [r.id[1] for r in residues] == list(range(1, span.length + 1))
            b = np.array([r["CA"].get_bfactor() for r in residues])
            np.testing.assert_allclose(b, plddt[span.residues], atol=0.005)  # written to 2 decimals
    cif = MMCIF2Dict(str(cif_path))
    assert cif["_entity.id"] == ["1", "2"] and cif["_struct_asym.entity_id"] == ["1", "2"]


def test_complex_pdb_is_deepminds_text_with_chains_from_a(heterodimer):
    ref_protein = pytest.importorskip("alphafold.common.protein")
    path, written = heterodimer
    features, best = written["features"], written["order"][0]
    out = written["outs"][best]
    b_factors = np.repeat(out["plddt"][:, None], 37, axis=1)
    theirs = ref_protein.from_prediction(features, out, b_factors, remove_leading_feature_dimension=False)
    # DISCREPANCY: DeepMind's from_prediction takes the 1-based asym_id as the chain index, so its PDB
    # names the chains B, C, ...; ours start at A (chain index asym_id - 1), the text is otherwise equal.
    assert {line[21] for line in ref_protein.to_pdb(theirs).splitlines() if line.startswith("ATOM")} == {"B", "C"}
    shifted = dataclasses.replace(theirs, chain_index=theirs.chain_index - 1)
    assert TargetDir(path).ranked(0)[0].read_text() == ref_protein.to_pdb(shifted)


def test_a_homodimers_chains_share_one_entity_also_through_pdb(homodimer):
    path, written = homodimer
    folder = TargetDir(path)
    pdb_path, cif_path = folder.ranked(0)
    cif = MMCIF2Dict(str(cif_path))
    assert cif["_entity.id"] == ["1"] and cif["_entity_poly.pdbx_strand_id"] == ["A,B"]
    # The finalize stage writes the mmCIF from the (relaxed or unrelaxed) PDB: the same text.
    best = written["order"][0]
    again = protein.to_mmcif(protein.from_pdb_string(pdb_path.read_text()), file_id=f"{path.name}_{best}",
                             model_type="Multimer")
    assert again == cif_path.read_text()


# --- relaxation --------------------------------------------------------------------------------------


def _two_chains(gap_after: int | None = None) -> protein.Protein:
    """Residues 1-12 of ubiquitin twice, chain B moved so that its atoms clash with chain A's in one
    place (closest heavy atoms 1.35 A apart); with ``gap_after``, chain B's residues after that one
    shifted by 1.5 A (a broken peptide bond)."""
    full = protein.from_pdb_string((STRUCTURES / "1ubi.pdb").read_text())
    n = 12
    part = {f: getattr(full, f)[:n] for f in ("atom_positions", "aatype", "atom_mask", "residue_index", "b_factors")}
    b = dict(part)
    b["atom_positions"] = part["atom_positions"] + 12.55 * np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    if gap_after is not None:
        b["atom_positions"] = b["atom_positions"].copy()
        b["atom_positions"][gap_after:] += np.array([0.0, 0.0, 1.5])
    merged = {f: np.concatenate([part[f], b[f]]) for f in part}
    return protein.Protein(**merged, chain_index=np.repeat([0, 1], n))


def test_violations_tell_interchain_clashes_and_broken_peptide_bonds():
    prot = _two_chains(gap_after=9)
    violations = find_violations(prot)
    assert violations.interchain_clashes == {(0, 1): 2} and violations.num_interchain_clash == 2
    assert violations.num_peptide_bond == 1
    summary = violation_summary(violations, [str(i) for i in range(prot.num_residues)], ["A", "B"])
    assert summary["interchain_clash"] == 2 and summary["interchain_clash_pairs"] == {"A-B": 2}
    assert summary["broken_peptide_bonds"] == 1
    # The same chains renamed to one: no inter-chain terms, and a monomer's summary keeps its keys.
    one = dataclasses.replace(prot, chain_index=np.zeros(prot.num_residues, dtype=np.int32),
                              residue_index=np.arange(1, prot.num_residues + 1))
    monomer = violation_summary(find_violations(one), [str(i) for i in range(one.num_residues)], ["A"])
    assert set(monomer) == {"residues", "bond", "angle", "clash", "per_residue"}


def test_relaxing_a_complex_removes_its_interchain_clash_and_keeps_its_chains(tmp_path, caplog):
    # Through `af2cpu relax`: its report and its console line give what happened between the chains.
    source, out = tmp_path / "complex.pdb", tmp_path / "relaxed.pdb"
    source.write_text(protein.to_pdb(_two_chains()))
    parser = argparse.ArgumentParser()
    relax_cli.add_arguments(parser)
    with caplog.at_level(logging.INFO, logger="af2cpu"):
        assert relax_cli.run(parser.parse_args([str(source), "--out", str(out), "--threads", "1"])) == 0
    report = json.loads((tmp_path / "relaxed.json").read_text())
    pdb_text = out.read_text()
    assert report["relaxed"]
    assert report["violations_before"]["interchain_clash"] == 2
    assert report["violations_after"]["interchain_clash"] == 0
    assert report["violations_after"]["broken_peptide_bonds"] == 0
    assert "inter-chain clashes 2 -> 0, broken peptide bonds 0 -> 0" in caplog.text
    structure = PDBParser(QUIET=True).get_structure("r", io.StringIO(pdb_text))
    assert [c.id for c in structure[0]] == ["A", "B"]
    assert [r.id[1] for r in structure[0]["B"]] == list(range(1, 13))
    assert sum(line.startswith("TER") for line in pdb_text.splitlines()) == 2
