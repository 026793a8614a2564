"""`af2cpu predict` end to end: real tools, mini databases, a real Dask cluster, random official-format
params, real OpenMM relaxation. Short real proteins keep the 48-block network affordable on 2 cores.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import PDBParser
from predict_runs import af2cpu, kill_once_recorded

from af2cpu.io import load_result_npz
from af2cpu.layout import BatchDir
from af2cpu.runtime.placement import plan_instances
from af2cpu.runtime.topology import read_topology
from af2cpu.summary import read_batch_summary

pytestmark = pytest.mark.slow

CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"  # 1EJG: no homologs in the mini databases
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"  # 1UBI
CAPSID_CTD = "PTSILDIRQGPKEPFRDYVDRFYKTLRAEQASQEVKNWMTETLLVQNANPDCKTILKALGPGATLEEMMTACQG"  # 1A8O

MODELS = ["model_1_ptm", "model_3_ptm"]
# One relaxation round (not AlphaFold's 3): relaxing random-params models dominates this file's time,
# and relax=best is what these tests prove (the protocol's rounds are tests/test_relax*.py's).
OVERRIDES = ["params=random", f"model.names=[{','.join(MODELS)}]", "model.num_recycle=0", "relax=best",
             "relax.timeout_s=300", "relax.max_outer_iterations=1"]
# For tests that prove resuming or splitting, not relaxation: the same network outputs, no relax stage.
NO_RELAX = [o for o in OVERRIDES if not o.startswith("relax")] + ["relax=none"]


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{header}\n{seq}\n" for header, seq in records.items()))
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One batch: three good targets, one invalid record, one target whose search cannot run."""
    root = tmp_path_factory.mktemp("predict")
    fasta = write_fasta(root / "batch.fasta", {
        "1EJG_A crambin": CRAMBIN,
        "1UBI_A ubiquitin": UBIQUITIN,
        "1A8O_A HIV capsid C-terminal domain": CAPSID_CTD,
        "bad record with a stop codon": "MKV*LLA",
        "broken_target": CRAMBIN[:30],
    })
    out = root / "out"
    (out / "broken_target").mkdir(parents=True)
    (out / "broken_target" / "msas").write_text("a file where the msas/ folder must go\n")
    (out / ".af2cpu-output").touch()
    proc = af2cpu("predict", str(fasta), "--out", str(out), *OVERRIDES)
    return proc, out


def test_predict_writes_every_alphafold_output(batch):
    proc, out = batch
    for target in ("1EJG_A", "1UBI_A", "1A8O_A"):
        folder = out / target
        for name in ("uniref90_hits.sto", "mgnify_hits.sto", "bfd_uniref_hits.a3m", "pdb_hits.hhr"):
            assert (folder / "msas" / name).is_file(), f"{target}: msas/{name}"
        expected = ["features.npz", "ranking_debug.json", "timings.json", "ranked_0.pdb", "ranked_1.pdb",
                    "ranked_0.cif", "ranked_1.cif", "plots/plddt.png", "plots/pae.png", "plots/msa_coverage.png"]
        for model in MODELS:
            expected += [f"result_{model}.npz", f"unrelaxed_{model}.pdb", f"confidence_{model}.json",
                         f"pae_{model}.json"]
        for name in expected:
            assert (folder / name).is_file(), f"{target}: {name} missing; stderr: {proc.stderr[-3000:]}"
        relaxed = list(folder.glob("relaxed_*.pdb"))
        assert len(relaxed) == 1, "relax=best relaxes exactly the best model"
        structure = PDBParser(QUIET=True).get_structure(target, folder / "ranked_0.pdb")
        assert len(list(structure.get_residues())) == len(json.loads((folder / "target.json").read_text())["sequence"])


def test_outputs_follow_alphafold_db_formats_and_confidence(batch):
    _, out = batch
    folder = out / "1UBI_A"
    ranking = json.loads((folder / "ranking_debug.json").read_text())
    assert ranking["untrained_params"] is True
    order = ranking["order"]
    assert sorted(order) == sorted(MODELS)
    assert ranking["plddts"][order[0]] >= ranking["plddts"][order[1]]
    for model in MODELS:
        result = load_result_npz(folder / f"result_{model}.npz")
        assert ranking["plddts"][model] == pytest.approx(float(result["ranking_confidence"]), abs=1e-4)
        confidence = json.loads((folder / f"confidence_{model}.json").read_text())
        assert set(confidence) == {"residueNumber", "confidenceScore", "confidenceCategory"}
        assert confidence["residueNumber"] == list(range(1, len(UBIQUITIN) + 1))
        np.testing.assert_allclose(confidence["confidenceScore"], result["plddt"], atol=0.006)
        pae = json.loads((folder / f"pae_{model}.json").read_text())
        assert set(pae[0]) == {"predicted_aligned_error", "max_predicted_aligned_error"}
        assert np.shape(pae[0]["predicted_aligned_error"]) == (len(UBIQUITIN), len(UBIQUITIN))
        # pLDDT lives in the B-factor column of every atom of the unrelaxed model.
        structure = PDBParser(QUIET=True).get_structure(model, folder / f"unrelaxed_{model}.pdb")
        per_residue = [next(iter(res)).get_bfactor() for res in structure.get_residues()]
        np.testing.assert_allclose(per_residue, result["plddt"], atol=0.006)
    best = PDBParser(QUIET=True).get_structure("best", folder / "ranked_0.pdb")
    best_plddt = load_result_npz(folder / f"result_{order[0]}.npz")["plddt"]
    np.testing.assert_allclose([next(iter(r)).get_bfactor() for r in best.get_residues()], best_plddt, atol=0.006)


def test_searches_of_a_target_run_in_parallel(batch):
    _, out = batch
    # A target's independent searches are separate tasks that share the cores. On the mini databases they
    # take fractions of a second, so on a busy machine one target's may happen not to overlap: overlap is
    # required of some target of the batch; the order constraints of every target.
    overlapping = {}
    for target in ("1EJG_A", "1UBI_A", "1A8O_A"):
        timings = json.loads((out / target / "timings.json").read_text())
        spans = {name: (t["start"], t["end"]) for name, t in timings.items() if name.startswith("search_")}
        assert {"search_uniref90", "search_mgnify", "search_bfd_uniref", "search_pdb70"} <= set(spans)
        first = ("search_uniref90", "search_mgnify", "search_bfd_uniref")
        overlapping[target] = [(a, b) for a in first for b in first if a < b and
                               spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
        assert spans["search_pdb70"][0] >= spans["search_uniref90"][1] - 0.01  # templates need UniRef90's MSA
        assert timings["features"]["start"] >= max(end for _, end in spans.values()) - 0.01
    assert any(overlapping.values()), f"no two independent searches of any target overlapped in time: {overlapping}"


def test_failures_are_isolated_and_reported(batch):
    proc, out = batch
    assert proc.returncode == 3, f"partial failure must exit 3; stdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    assert "invalid record skipped" in proc.stdout and "'*'" in proc.stdout
    assert "broken_target: FAILED at search_" in proc.stdout
    summary = {s.target_id: s for s in read_batch_summary(BatchDir(out))}
    assert summary["broken_target"].status == "failed" and "msas" in summary["broken_target"].failure_reason
    for target in ("1EJG_A", "1UBI_A", "1A8O_A"):
        assert summary[target].status == "done" and summary[target].untrained_params
        assert summary[target].best_model in MODELS


def test_no_homolog_target_has_a_single_sequence_msa(batch):
    _, out = batch
    report = json.loads((out / "1EJG_A" / "features_report.json").read_text())
    assert report["msa_sizes"]["uniref90"] <= 1 and report["msa_sizes"]["mgnify"] <= 1


def test_resume_after_sigkill_skips_finished_searches(batch, tmp_path):
    _, reference_out = batch
    fasta = write_fasta(tmp_path / "one.fasta", {"1A8O_A HIV capsid C-terminal domain": CAPSID_CTD})
    out = tmp_path / "out"
    # One model: a resumed run that lost or redid its searches shows in either model's outputs.
    overrides = [o for o in NO_RELAX if not o.startswith("model.names")] + [f"model.names=[{MODELS[0]}]"]
    records = [out / "1A8O_A" / f"search_{n}.stage.json" for n in ("uniref90", "mgnify", "bfd_uniref", "pdb70")]
    kill_once_recorded(["predict", str(fasta), "--out", str(out), *overrides], records, timeout_s=600)
    msas = sorted((out / "1A8O_A" / "msas").iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in msas}

    rerun = af2cpu("predict", str(fasta), "--out", str(out), *overrides)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "1A8O_A" / "msas").iterdir())}
    assert after == before, "the rerun redid a finished search"
    assert "search_uniref90 cached" in rerun.stderr or "search_uniref90 =" in rerun.stderr
    for model in MODELS[:1]:
        resumed = load_result_npz(out / "1A8O_A" / f"result_{model}.npz")
        uninterrupted = load_result_npz(reference_out / "1A8O_A" / f"result_{model}.npz")
        # Same features, seeds, params and thread count: the runs agree to float rounding.
        np.testing.assert_allclose(resumed["structure_module"]["final_atom_positions"],
                                   uninterrupted["structure_module"]["final_atom_positions"], atol=1e-3)
        np.testing.assert_allclose(resumed["plddt"], uninterrupted["plddt"], atol=1e-3)
    assert not list((out / "1A8O_A").glob(".*.tmp")), "a temporary file was left behind"


def test_second_run_reuses_everything(batch):
    _, out = batch
    fasta = Path(out).parent / "batch.fasta"
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "1UBI_A").glob("result_*.npz")}
    again = af2cpu("predict", str(fasta), "--out", str(out), *OVERRIDES)
    assert again.returncode == 3
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "finished inference was recomputed"


def test_foreign_output_folder_is_refused(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    fasta = write_fasta(tmp_path / "q.fasta", {"q": CRAMBIN})
    proc = af2cpu("predict", str(fasta), "--out", str(out), "params=random")
    assert proc.returncode == 2
    assert "not made by af2cpu" in proc.stderr and str(out) in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex"]


def test_missing_params_say_how_to_get_them(tmp_path):
    fasta = write_fasta(tmp_path / "q.fasta", {"q": CRAMBIN})
    proc = af2cpu("predict", str(fasta), "--out", str(tmp_path / "o"), f"params_dir={tmp_path / 'none'}")
    assert proc.returncode == 2
    assert "af2cpu params download" in proc.stderr and "params=random" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explore_notebook_runs_top_to_bottom(batch, monkeypatch):
    import nbclient
    import nbformat

    _, out = batch
    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "examples" / "explore.ipynb", as_version=4)
    monkeypatch.setenv("AF2CPU_RESULT", str(out / "1UBI_A"))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "mean pLDDT" in text and "ranked_0" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"


def test_split_workflow_features_then_infer_equals_predict(batch, tmp_path):
    """`af2cpu features` (e.g. on CPU-only nodes), then `af2cpu infer` later: the same files as predict."""
    _, reference_out = batch
    fasta = write_fasta(tmp_path / "one.fasta", {"1UBI_A ubiquitin": UBIQUITIN})
    out = tmp_path / "split"
    early = af2cpu("infer", str(fasta), "--out", str(out), *NO_RELAX)
    assert early.returncode == 1 and "run `af2cpu features`" in early.stdout

    features = af2cpu("features", str(fasta), "--out", str(out))
    assert features.returncode == 0, features.stderr[-2000:]
    assert not list((out / "1UBI_A").glob("result_*.npz"))
    # One thread per model instance (runtime.threads): two single-thread workers, each running a model.
    # No relaxation: the network's outputs are what must equal predict's (relax=best is proven on
    # predict's own outputs by test_predict_writes_every_alphafold_output).
    infer = af2cpu("infer", str(fasta), "--out", str(out), *NO_RELAX, "runtime.threads=1")
    assert infer.returncode == 0, infer.stdout + infer.stderr[-3000:]
    assert "search_uniref90" not in infer.stderr  # no search ran or was scheduled
    for model in MODELS:
        record = json.loads((out / "1UBI_A" / f"infer_{model}.stage.json").read_text())
        oneshot = json.loads((reference_out / "1UBI_A" / f"infer_{model}.stage.json").read_text())
        # predict's default: every CPU of the worker, as the placement planner sizes it.
        default = plan_instances(read_topology()).allotments[0].threads
        assert record["info"]["threads"] == 1 and oneshot["info"]["threads"] == default
    for model in MODELS:
        split = load_result_npz(out / "1UBI_A" / f"result_{model}.npz")
        oneshot = load_result_npz(reference_out / "1UBI_A" / f"result_{model}.npz")
        np.testing.assert_allclose(split["structure_module"]["final_atom_positions"],
                                   oneshot["structure_module"]["final_atom_positions"], atol=1e-3)
    assert json.loads((out / "1UBI_A" / "ranking_debug.json").read_text())["order"] == \
        json.loads((reference_out / "1UBI_A" / "ranking_debug.json").read_text())["order"]
    assert (out / "1UBI_A" / "ranked_0.pdb").is_file() and (out / "1UBI_A" / "ranked_0.cif").is_file()
    assert not list((out / "1UBI_A").glob("relaxed_*.pdb")), "relax=none relaxed a model"
