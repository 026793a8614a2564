"""A target folder written by af2cpu's writers, read back by load_result as a notebook would."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import MMCIFParser, PDBParser
from test_outputs import QUERY, model_output

from af2cpu import formats, plots
from af2cpu import io as afio
from af2cpu.common import protein
from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.layout import BatchDir, TargetDir
from af2cpu.results import TargetResult, load_result
from af2cpu.summary import TargetSummary, write_batch_summary

DATA = Path(__file__).parent / "data"
MODELS = [f"model_{i}_ptm" for i in range(1, 6)]
MSA_FILES = ("bfd_uniref_hits.a3m", "mgnify_hits.sto", "uniref90_hits.sto")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HHR = """\
Query         T1
Match_columns 30
No_of_seqs    41 out of 41
Neff          3.2
Searched_HMMs 10
Date          Sat Nov 21 14:00:00 2026
Command       hhsearch -i query.a3m -d pdb70

 No Hit                             Prob E-value P-value  Score    SS Cols Query HMM  Template HMM
  1 1ubi_A Ubiquitin               100.0 1.2E-40 3.1E-45  250.0   0.0   30    1-30      1-30 (76)

No 1
>1ubi_A Ubiquitin; Protein degradation; 1.8A {Homo sapiens}
Probab=100.00  E-value=1.2e-40  Score=250.00  Aligned_cols=30  Identities=100%  Similarity=1.500  \
Sum_probs=29.5  Template_Neff=5.100

Q T1                1 MQIFVKTLTGKTITLEVEPSDTIENVKAKI   30 (30)
Q Consensus         1 ~~i~vk~~~g~~~~~~v~~~~tv~~lk~~i   30 (30)
                      ||||||||||||||||||||||||||||||
T Consensus         1 ~~i~vk~~~g~~~~~~v~~~~tv~~lk~~i   30 (76)
T 1ubi_A            1 MQIFVKTLTGKTITLEVEPSDTIENVKAKI   30 (76)

"""


def homolog_rows(rng: np.random.Generator, count: int) -> list[str]:
    """Query-aligned homologs of QUERY: substitutions at 25..98 % identity, ragged ends, a few gaps."""
    rows = []
    for _ in range(count):
        identity = rng.uniform(0.25, 0.98)
        row = [c if rng.random() < identity else rc.restypes[rng.integers(20)] for c in QUERY]
        start = int(rng.integers(0, 10)) if rng.random() < 0.5 else 0
        end = len(QUERY) - (int(rng.integers(0, 10)) if rng.random() < 0.5 else 0)
        row = ["-"] * start + row[start:end] + ["-"] * (len(QUERY) - end)
        if rng.random() < 0.3:
            gap = int(rng.integers(10, 25))
            row[gap : gap + 3] = "---"
        rows.append("".join(row))
    return rows


def write_a3m(path: Path, rows: list[str], rng: np.random.Generator) -> None:
    records = [f">T1\n{QUERY}"]
    for i, row in enumerate(rows):
        # An insertion (lower case) after a random residue, as hhblits writes them.
        cut = int(rng.integers(1, len(row)))
        records.append(f">UniRef100_A{i:05d} n=1 Tax=Homo sapiens\n{row[:cut]}{'kg' * (i % 2)}{row[cut:]}")
    path.write_text("\n".join(records) + "\n")


def write_stockholm(path: Path, rows: list[str], prefix: str) -> None:
    names = ["T1"] + [f"{prefix}{i:05d}/1-30" for i in range(len(rows))]
    width = max(map(len, names)) + 2
    body = [f"{name.ljust(width)}{row}" for name, row in zip(names, [QUERY] + rows)]
    path.write_text("# STOCKHOLM 1.0\n\n" + "\n".join(body) + f"\n{'#=GC RF'.ljust(width)}{'x' * len(QUERY)}\n//\n")


def ubiquitin_30() -> protein.Protein:
    full = protein.from_pdb_string((DATA / "structures" / "1ubi.pdb").read_text())
    return protein.Protein(
        atom_positions=full.atom_positions[:30],
        aatype=full.aatype[:30],
        atom_mask=full.atom_mask[:30],
        residue_index=full.residue_index[:30],
        chain_index=full.chain_index[:30],
        b_factors=full.b_factors[:30],
    )


def raw_features(msa_rows: list[str]) -> dict:
    """AlphaFold2's raw monomer features: sequence, the deduplicated MSA, one template."""
    length = len(QUERY)
    msa = np.array([[rc.HHBLITS_AA_TO_ID[c] for c in row] for row in msa_rows], dtype=np.int32)
    return {
        "aatype": rc.sequence_to_onehot(QUERY, rc.restype_order_with_x).astype(np.int32),
        "between_segment_residues": np.zeros(length, dtype=np.int32),
        "domain_name": np.array([b"T1"], dtype=object),
        "residue_index": np.arange(length, dtype=np.int32),
        "seq_length": np.full(length, length, dtype=np.int32),
        "sequence": np.array([QUERY.encode()], dtype=object),
        "msa": msa,
        "deletion_matrix_int": np.zeros(msa.shape, dtype=np.int32),
        "num_alignments": np.full(length, len(msa), dtype=np.int32),
        "msa_species_identifiers": np.array([b""] * len(msa), dtype=object),
        "template_aatype": np.zeros((1, length, 22), dtype=np.float32),
        "template_all_atom_masks": np.zeros((1, length, 37), dtype=np.float32),
        "template_all_atom_positions": np.zeros((1, length, 37, 3), dtype=np.float32),
        "template_domain_names": np.array([b"1ubi_A"], dtype=object),
        "template_sequence": np.array([QUERY.encode()], dtype=object),
        "template_sum_probs": np.array([[29.5]], dtype=np.float32),
    }


def write_target(target: Path, rng: np.random.Generator, relaxed: bool = True) -> dict:
    """Write a whole target folder as the pipeline does, with untrained-looking outputs; returns them."""
    (target / "msas").mkdir(parents=True)
    uniref, mgnify, bfd = homolog_rows(rng, 24), homolog_rows(rng, 10), homolog_rows(rng, 12)
    write_stockholm(target / "msas" / "uniref90_hits.sto", uniref, "UniRef90_P")
    write_stockholm(target / "msas" / "mgnify_hits.sto", mgnify, "MGYP")
    write_a3m(target / "msas" / "bfd_uniref_hits.a3m", bfd, rng)
    (target / "msas" / "pdb_hits.hhr").write_text(HHR)

    stages: dict[str, tuple[float, float]] = {}
    with formats.timed(stages, "features"):
        features = raw_features(list(dict.fromkeys([QUERY] + uniref + mgnify + bfd)))
        afio.save_features_npz(target / "features.npz", features)

    native = ubiquitin_30()
    outs, pdbs, cifs = {}, {}, {}
    for model in MODELS:
        with formats.timed(stages, f"predict_{model}"):
            out = model_output(rng, len(QUERY), num_msa=len(features["msa"]), confidence=rng.uniform(-4, 8))
            out["structure_module"]["final_atom_positions"] = (
                native.atom_positions + rng.normal(0.0, 0.5, native.atom_positions.shape)
            ).astype(np.float32)
            out["structure_module"]["final_atom_mask"] = native.atom_mask.astype(np.float32)
            if model != "model_1_ptm":
                del out["representations"]  # kept for one model only, as `save_representations` would
            formats.write_model_outputs(TargetDir(target), model, out)
            prot = formats.protein_from_prediction(features, out)
            pdbs[model] = protein.to_pdb(prot)
            cifs[model] = protein.to_mmcif(prot, file_id="T1")
            afio.atomic_write_text(target / f"unrelaxed_{model}.pdb", pdbs[model])
            outs[model] = out
    if relaxed:
        afio.atomic_write_text(target / "relaxed_model_3_ptm.pdb", pdbs["model_3_ptm"])

    confidences = {m: float(o["ranking_confidence"]) for m, o in outs.items()}
    order = formats.rank_models(confidences)
    ptms = {m: o["ptm"] for m, o in outs.items()}
    afio.atomic_write_text(
        target / "ranking_debug.json", formats.ranking_debug_json(confidences, ptms=ptms, untrained_params=True)
    )
    formats.write_ranked_structures(TargetDir(target), order, pdbs, cifs)
    afio.atomic_write_text(target / "timings.json", formats.timings_json(stages))
    (target / "plots").mkdir()
    plots.plot_plddt({m: outs[m]["plddt"] for m in order}, path=target / "plots" / "plddt.png")
    plots.plot_pae({m: outs[m]["predicted_aligned_error"] for m in order}, path=target / "plots" / "pae.png")
    plots.plot_msa_coverage(features["msa"], path=target / "plots" / "msa_coverage.png")
    return {"outs": outs, "order": order, "features": features, "msas": {"uniref": uniref, "bfd": bfd}}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = tmp_path_factory.mktemp("out") / "T1"
    written = write_target(path, np.random.default_rng(7))
    return path, written


def ca_b_factors(structure) -> np.ndarray:
    return np.array([res["CA"].get_bfactor() for res in structure.get_residues()])


def test_every_output_file_exists_and_the_jsons_follow_alphafold_db_format(target):
    path, written = target
    for model in MODELS:
        plddt = written["outs"][model]["plddt"]
        confidence = json.loads((path / f"confidence_{model}.json").read_text())
        assert set(confidence) == {"residueNumber", "confidenceScore", "confidenceCategory"}
        assert confidence["residueNumber"] == list(range(1, 31))
        np.testing.assert_allclose(confidence["confidenceScore"], plddt, atol=0.005)
        assert set(confidence["confidenceCategory"]) <= {"D", "L", "M", "H"}
        (pae,) = json.loads((path / f"pae_{model}.json").read_text())
        assert set(pae) == {"predicted_aligned_error", "max_predicted_aligned_error"}
        np.testing.assert_allclose(pae["predicted_aligned_error"], written["outs"][model]["predicted_aligned_error"], atol=0.05)
        assert pae["max_predicted_aligned_error"] == 31.75
    for i in range(5):
        assert (path / f"ranked_{i}.pdb").is_file() and (path / f"ranked_{i}.cif").is_file()
    for png in ("plddt.png", "pae.png", "msa_coverage.png"):
        data = (path / "plots" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not list(path.rglob(".*.tmp"))


def test_ranking_follows_mean_plddt_and_says_params_are_untrained(target):
    path, written = target
    ranking = json.loads((path / "ranking_debug.json").read_text())
    means = {m: float(np.mean(o["plddt"])) for m, o in written["outs"].items()}
    assert ranking["order"] == sorted(means, key=means.get, reverse=True)
    assert ranking["plddts"] == pytest.approx(means)
    assert ranking["untrained_params"] is True


def test_plddt_b_factors_of_ranked_and_unrelaxed_pdbs_equal_result_npz(target):
    path, written = target
    parser = PDBParser(QUIET=True)
    for i, model in enumerate(written["order"]):
        plddt = afio.load_result_npz(path / f"result_{model}.npz", ["plddt"])["plddt"]
        for name in (f"ranked_{i}.pdb", f"unrelaxed_{model}.pdb"):
            structure = parser.get_structure(name, path / name)
            assert "".join(rc.restype_3to1[r.get_resname()] for r in structure.get_residues()) == QUERY
            np.testing.assert_allclose(ca_b_factors(structure), plddt, atol=0.005)
        cif = MMCIFParser(QUIET=True).get_structure("c", path / f"ranked_{i}.cif")
        np.testing.assert_allclose(ca_b_factors(cif), plddt, atol=0.005)


@pytest.mark.reference
def test_deepminds_protein_reader_reads_our_pdb_with_plddt_b_factors(target):
    af_protein = pytest.importorskip("alphafold.common.protein")
    path, written = target
    best = written["order"][0]
    prot = af_protein.from_pdb_string((path / "ranked_0.pdb").read_text())
    np.testing.assert_allclose(prot.b_factors[:, 1], written["outs"][best]["plddt"], atol=0.005)
    np.testing.assert_allclose(
        prot.atom_positions, written["outs"][best]["structure_module"]["final_atom_positions"] * prot.atom_mask[..., None],
        atol=0.0006,
    )


def test_load_result_finds_everything(target):
    path, written = target
    result = load_result(path)
    assert isinstance(result, TargetResult) and result.target_id == "T1"
    assert result.model_names == written["order"] and result.best_model == written["order"][0]
    assert result.untrained_params
    for model, out in written["outs"].items():
        np.testing.assert_array_equal(result.plddt[model], out["plddt"])
        np.testing.assert_array_equal(result.pae[model], out["predicted_aligned_error"])
        assert result.ptm[model] == pytest.approx(float(out["ptm"]))
    assert result.iptm == {}
    full = result.result("model_2_ptm")
    np.testing.assert_array_equal(full["distogram"]["logits"], written["outs"]["model_2_ptm"]["distogram"]["logits"])

    assert list(result.representations) == ["model_1_ptm"]
    reps = result.representations["model_1_ptm"]
    assert set(reps) == {"single", "pair", "msa_first_row", "structure_module"}
    assert reps["pair"].shape == (30, 30, 128)

    assert result.sequence == QUERY
    np.testing.assert_array_equal(result.features["msa"], written["features"]["msa"])
    assert result.features["template_domain_names"].tolist() == [b"1ubi_A"]
    assert list(result.msas) == list(MSA_FILES)
    assert result.msas["uniref90_hits.sto"] == [QUERY] + written["msas"]["uniref"]
    assert result.msas["bfd_uniref_hits.a3m"] == [QUERY] + written["msas"]["bfd"]
    (hit,) = result.template_hits
    assert hit.name.startswith("1ubi_A") and hit.sum_probs == pytest.approx(29.5)

    stems = list(result.structures)
    assert stems[:5] == [f"ranked_{i}" for i in range(5)]
    assert set(stems[5:]) == {f"unrelaxed_{m}" for m in MODELS} | {"relaxed_model_3_ptm"}
    best = result.structures["ranked_0"]
    assert best.sequence() == QUERY
    np.testing.assert_allclose(best.b_factors[:, 0], result.plddt[result.best_model], atol=0.005)
    assert result.structure_path("model_3_ptm").name == "relaxed_model_3_ptm.pdb"
    assert result.structure_path("model_4_ptm").name == "unrelaxed_model_4_ptm.pdb"
    assert result.structure_path().name == "ranked_0.pdb"

    assert set(result.timings) == {"features"} | {f"predict_{m}" for m in MODELS}
    assert result.ranking["order"] == written["order"]

    summary = result.summary()
    assert summary.status == "done" and summary.best_model == written["order"][0] and summary.length == 30
    assert summary.untrained_params and summary.ptm == pytest.approx(result.ptm[written["order"][0]])


def test_repr_tells_what_the_folder_holds(target):
    text = repr(load_result(target[0]))
    assert text.startswith("TargetResult('T1'")
    assert "untrained params" in text
    assert "length: 30" in text
    assert all(m in text for m in MODELS) and "pTM" in text
    assert "uniref90_hits.sto" in text and "msas/pdb_hits.hhr" in text
    assert "6 stages" in text


def test_notebook_plots_are_figures_that_save_as_png(target, tmp_path):
    result = load_result(target[0])
    fig = result.plot_plddt(path=tmp_path / "plddt.png")
    assert len(fig.axes[0].lines) == 5
    assert "UNTRAINED" in fig.axes[0].get_title()
    fig = result.plot_pae()
    assert len([ax for ax in fig.axes if ax.images]) == 5
    fig = result.plot_pae("model_2_ptm", path=tmp_path / "pae.png")
    assert len([ax for ax in fig.axes if ax.images]) == 1
    fig = result.plot_msa_coverage(path=tmp_path / "msa.png")
    coverage_line = fig.axes[0].lines[0].get_ydata()
    np.testing.assert_array_equal(coverage_line, (result.features["msa"] != plots.MSA_GAP).sum(axis=0))
    for name in ("plddt.png", "pae.png", "msa.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(KeyError, match="model_9_ptm"):
        result.plot_pae("model_9_ptm")


def test_pae_heatmaps_wrap_to_rows_of_five_models(tmp_path):
    rng = np.random.default_rng(5)
    fig = plots.plot_pae({f"model_{i}_multimer_v3_pred_0": rng.uniform(0, 31.75, (12, 12)) for i in range(7)})
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 7
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(rows) == 2


def test_msa_coverage_identity_counts_only_aligned_columns():
    gap = plots.MSA_GAP
    msa = np.array([[0, 1, 2, 3], [0, 1, 5, gap], [gap, gap, gap, gap], [4, 1, 2, 3]])
    identity, aligned, coverage = plots.msa_identity_and_coverage(msa)
    np.testing.assert_allclose(identity, [1.0, 2 / 3, 0.0, 0.75])
    np.testing.assert_array_equal(coverage, [3, 3, 3, 2])
    assert aligned.sum() == 11


def test_view_uses_py3dmol_or_says_how_to_install_it(target, capsys):
    result = load_result(target[0])
    try:
        import py3Dmol  # noqa: F401
    except ImportError:
        assert result.view() is None
        assert "pip install py3Dmol" in capsys.readouterr().out
    else:
        assert result.view("model_2_ptm") is not None


def test_a_folder_without_optional_files_loads_with_empty_attributes(tmp_path):
    target = tmp_path / "T2"
    target.mkdir()
    rng = np.random.default_rng(3)
    for model, confidence in (("model_1", -5.0), ("model_2", 8.0)):
        out = model_output(rng, 30, ptm=False, confidence=confidence)
        del out["representations"]
        formats.write_model_outputs(TargetDir(target), model, out)
    result = load_result(target)
    assert result.model_names == ["model_2", "model_1"]  # not ranked yet: by the saved ranking_confidence
    assert list(result.plddt) == ["model_2", "model_1"]
    assert result.features is None and result.sequence is None
    assert dict(result.msas) == {} and result.template_hits == []
    assert result.pae == {} and result.ptm == {} and dict(result.representations) == {}
    assert result.ranking is None and result.timings is None and not result.untrained_params
    assert dict(result.structures) == {}
    assert result.summary().status == "pending"
    assert "models (best first)" in repr(result) and "template hits: none" in repr(result)
    with pytest.raises(FileNotFoundError, match="predicted aligned error"):
        result.plot_pae()
    with pytest.raises(FileNotFoundError, match="features.npz"):
        result.plot_msa_coverage()
    assert not (target / "pae_model_1.json").exists()
    assert "model_1: mean pLDDT" in repr(result)
    with pytest.raises(FileNotFoundError, match="unrelaxed_model_2.pdb"):
        result.structure_path()


def test_a_folder_that_is_not_a_target_folder_is_named_in_the_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a prediction")
    with pytest.raises(InputError, match=f"{tmp_path} is not an af2cpu target folder"):
        load_result(tmp_path)
    alphafold2 = tmp_path / "af2_T1"
    alphafold2.mkdir()
    for name in ("result_model_1.pkl", "features.pkl", "ranking_debug.json", "ranked_0.pdb"):
        (alphafold2 / name).write_bytes(b"not read")
    with pytest.raises(InputError, match="AlphaFold2 output folder"):
        load_result(alphafold2)
    with pytest.raises(InputError, match="does not exist"):
        load_result(tmp_path / "missing")
    batch = tmp_path / "out"
    (batch / "T1").mkdir(parents=True)
    write_batch_summary(BatchDir(batch), [TargetSummary("T1", "pending")])
    with pytest.raises(InputError, match="batch output folder.*out/T1"):
        load_result(batch)


def test_target_plots_of_a_monomer_are_those_of_the_plot_functions(target, tmp_path):
    path, written = target
    copy = tmp_path / "T1"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "plots")
    folder = TargetDir(copy)
    paths = plots.write_target_plots(folder, written["order"], "", msa_title="")
    assert [p.name for p in paths] == ["plddt.png", "pae.png", "msa_coverage.png"]
    for name in ("plddt.png", "pae.png", "msa_coverage.png"):  # byte for byte those write_target drew
        assert (folder.plots / name).read_bytes() == (path / "plots" / name).read_bytes(), name


def test_a_monomer_is_one_chain(target):
    path, written = target
    result = load_result(path)
    assert not result.is_complex
    (chain,) = result.chains
    assert (chain.id, chain.start, chain.end, chain.sequence) == ("A", 0, len(QUERY), QUERY)
    best = written["order"][0]
    np.testing.assert_array_equal(result.chain_plddt()["A"], written["outs"][best]["plddt"])
    np.testing.assert_array_equal(result.chain_pae()[("A", "A")], written["outs"][best]["predicted_aligned_error"])
