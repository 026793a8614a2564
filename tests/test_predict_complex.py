"""`af2cpu predict` and `af2cpu infer` on complexes end to end: real tools on the mini databases, a real
Dask cluster, random multimer params in the official format, real OpenMM relaxation of the best model.

One batch holds a monomer, a heterodimer (``A:B``) and a homodimer (``A:A``) whose chain is the
heterodimer's chain B. Its first run is killed (SIGKILL) right after the searches and run again, as a
user would: every other test reads that resumed run. The chains are 18-residue N-terminal fragments
of human haemoglobin alpha and beta: short enough for the 48-block multimer network on 2 cores, yet
with real species-tagged homologs in ``uniprot/`` so that pairing pairs real rows.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import MMCIFParser, PDBParser
from predict_runs import af2cpu, kill_once_recorded

from af2cpu.config import compose_config
from af2cpu.data import DATA_DIR
from af2cpu.errors import InputError
from af2cpu.io import load_result_npz
from af2cpu.layout import BatchDir
from af2cpu.preprocessing.inputs import parse_fasta_targets, read_fasta_targets
from af2cpu.scheduler.stages import target_stages
from af2cpu.summary import read_batch_summary

pytestmark = pytest.mark.slow

(HAEMOGLOBIN,) = read_fasta_targets(DATA_DIR / "examples" / "hemoglobin_ab.fasta")
ALPHA, BETA = (c.sequence[:18] for c in HAEMOGLOBIN.chains)
CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"  # 1EJG
MULTIMER = "model_1_multimer_v3"
PREDICTIONS = [f"{MULTIMER}_pred_{k}" for k in range(2)]
# One monomer and one multimer model, two predictions of it, one pass each, one relaxation round of the
# best (the protocol's rounds are tests/test_relax*.py's).
OVERRIDES = ["params=random", "model.names=[model_1_ptm]", f"model.multimer_names=[{MULTIMER}]",
             "model.num_predictions_per_model=2", "model.num_recycle=0", "relax=best", "relax.timeout_s=300",
             "relax.max_outer_iterations=1"]
COMPLEXES = {"het": [ALPHA, BETA], "homo": [BETA, BETA]}
MULTIMER_SEARCHES = ("uniref90", "mgnify", "bfd_uniref", "pdb_seqres", "uniprot")
# pLDDT is written with 2 decimals in PDB B-factors.
PLDDT_ATOL = 0.006


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The batch, killed after its searches and run again: (the rerun, the output folder, each target's
    msas/ files (mtime, bytes) when it was killed)."""
    root = tmp_path_factory.mktemp("complex")
    fasta = root / "batch.fasta"
    fasta.write_text(f">1EJG_A crambin\n{CRAMBIN}\n"
                     f">het haemoglobin alpha:beta N-terminal fragments\n{ALPHA}:{BETA}\n"
                     f">homo haemoglobin beta N-terminal fragment, two copies\n{BETA}:{BETA}\n")
    out = root / "out"
    records = [out / "1EJG_A" / f"search_{n}.stage.json" for n in ("uniref90", "mgnify", "bfd_uniref", "pdb70")]
    records += [out / "het" / f"search_{n}_{c}.stage.json" for n in MULTIMER_SEARCHES for c in "AB"]
    records += [out / "homo" / f"search_{n}_A.stage.json" for n in MULTIMER_SEARCHES]
    kill_once_recorded(["predict", str(fasta), "--out", str(out), *OVERRIDES], records, timeout_s=900)
    msas = {t: _files(out / t / "msas") for t in ("1EJG_A", "het", "homo")}
    return af2cpu("predict", str(fasta), "--out", str(out), *OVERRIDES), out, msas


def test_resume_after_sigkill_keeps_the_searches(batch):
    rerun, out, before = batch
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    for target, files in before.items():
        assert _files(out / target / "msas") == files, f"{target}: the rerun redid a finished search"
    assert "search_uniref90_A cached" in rerun.stderr or "search_uniref90_A =" in rerun.stderr
    summary = {s.target_id: s for s in read_batch_summary(BatchDir(out))}
    assert {t: s.status for t, s in summary.items()} == {"1EJG_A": "done", "het": "done", "homo": "done"}
    assert summary["1EJG_A"].best_model == "model_1_ptm" and summary["1EJG_A"].iptm is None
    assert summary["het"].best_model in PREDICTIONS and 0 <= summary["het"].iptm <= 1


def test_homodimer_chain_is_searched_once_and_shared_with_the_heterodimer(batch):
    _, out, _ = batch
    assert sorted(p.name for p in (out / "homo" / "msas").iterdir() if p.is_dir()) == ["A"]
    assert not list((out / "homo").glob("search_*_B.stage.json")), "the homodimer's second copy was searched"
    # The homodimer's chain is the heterodimer's chain B: the batch searched it once, for the first target
    # submitted (equal lengths keep the FASTA order), and the homodimer copied each result.
    for name in MULTIMER_SEARCHES:
        het = json.loads((out / "het" / f"search_{name}_B.stage.json").read_text())["info"]
        homo = json.loads((out / "homo" / f"search_{name}_A.stage.json").read_text())["info"]
        assert "copied_from" not in het
        assert Path(homo["copied_from"]) == out / "het" / "msas" / "B", name
    report = json.loads((out / "homo" / "features_report.json").read_text())
    assert [c["searched_as"] for c in report["chains"]] == ["A", "A"]
    assert json.loads((out / "het" / "features_report.json").read_text())["pairing_msa_sizes"]["A"] > 1


@pytest.mark.parametrize("target", COMPLEXES)
def test_complex_outputs_are_multichain_with_plddt_bfactors(batch, target):
    _, out, _ = batch
    folder, chains = out / target, COMPLEXES[target]
    for name in PREDICTIONS:
        for file in (f"result_{name}.npz", f"confidence_{name}.json", f"pae_{name}.json", f"unrelaxed_{name}.pdb"):
            assert (folder / file).is_file(), f"{target}: {file}"
        result = load_result_npz(folder / f"result_{name}.npz")
        structure = PDBParser(QUIET=True).get_structure(name, folder / f"unrelaxed_{name}.pdb")
        # AlphaFold2's numbering: chains A, B, ..., residues counted from 1 again in each chain.
        assert [c.id for c in structure[0]] == ["A", "B"]
        for chain, sequence in zip(structure[0], chains):
            assert [r.id[1] for r in chain] == list(range(1, len(sequence) + 1))
        per_residue = [next(iter(r)).get_bfactor() for r in structure.get_residues()]
        np.testing.assert_allclose(per_residue, result["plddt"], atol=PLDDT_ATOL)
        pae = json.loads((folder / f"pae_{name}.json").read_text())[0]["predicted_aligned_error"]
        assert np.shape(pae) == (2 * len(chains[0]),) * 2
    assert len(list(folder.glob("relaxed_*.pdb"))) == 1, "relax=best relaxes exactly the best prediction"
    for plot in ("plddt", "pae", "msa_coverage"):
        assert (folder / "plots" / f"{plot}.png").is_file(), f"{target}: plots/{plot}.png"
    for rank in range(len(PREDICTIONS)):
        pdb = PDBParser(QUIET=True).get_structure("pdb", folder / f"ranked_{rank}.pdb")
        cif = MMCIFParser(QUIET=True).get_structure("cif", folder / f"ranked_{rank}.cif")
        for parsed in (pdb, cif):
            assert [c.id for c in parsed[0]] == ["A", "B"]
            assert [len(c) for c in parsed[0]] == [len(s) for s in chains]
            assert [r.id[1] for r in parsed[0]["B"]] == list(range(1, len(chains[1]) + 1))


@pytest.mark.parametrize("target", COMPLEXES)
def test_complexes_rank_by_iptm_plus_ptm(batch, target):
    _, out, _ = batch
    folder = out / target
    ranking = json.loads((folder / "ranking_debug.json").read_text())
    assert set(ranking) == {"iptm+ptm", "order", "untrained_params"}
    scores = ranking["iptm+ptm"]
    assert sorted(scores) == sorted(PREDICTIONS) and sorted(ranking["order"]) == sorted(PREDICTIONS)
    assert [scores[n] for n in ranking["order"]] == sorted(scores.values(), reverse=True)
    for name in PREDICTIONS:
        result = load_result_npz(folder / f"result_{name}.npz")
        assert scores[name] == pytest.approx(0.8 * float(result["iptm"]) + 0.2 * float(result["ptm"]), abs=1e-5)
    # The predictions have their own seeds: their MSA samples, and so their structures, differ.
    first, second = (load_result_npz(folder / f"result_{n}.npz")["plddt"] for n in PREDICTIONS)
    assert not np.array_equal(first, second)
    best = PDBParser(QUIET=True).get_structure("best", folder / "ranked_0.pdb")
    best_plddt = load_result_npz(folder / f"result_{ranking['order'][0]}.npz")["plddt"]
    np.testing.assert_allclose([next(iter(r)).get_bfactor() for r in best.get_residues()], best_plddt,
                               atol=PLDDT_ATOL)


def test_infer_folds_a_complex_from_its_features(batch, tmp_path):
    """`af2cpu infer` on a complex's features.npz (as `af2cpu features` writes it elsewhere): the same
    first prediction as the batch (same seed, params and thread count)."""
    _, out, _ = batch
    fasta = tmp_path / "homo.fasta"
    fasta.write_text(f">homo haemoglobin beta N-terminal fragment, two copies\n{BETA}:{BETA}\n")
    split = tmp_path / "split"
    (split / "homo").mkdir(parents=True)
    (split / BatchDir.MARKER).touch()
    (split / "homo" / "features.npz").write_bytes((out / "homo" / "features.npz").read_bytes())
    overrides = [o for o in OVERRIDES if not o.startswith(("relax", "model.num_predictions"))]
    proc = af2cpu("infer", str(fasta), "--out", str(split), *overrides, "relax=none",
                  "model.num_predictions_per_model=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "search_" not in proc.stderr
    assert json.loads((split / "homo" / "ranking_debug.json").read_text())["order"] == [PREDICTIONS[0]]
    infer, oneshot = (load_result_npz(folder / "homo" / f"result_{PREDICTIONS[0]}.npz") for folder in (split, out))
    # Same example, seed and weights: equal to float rounding across runs.
    np.testing.assert_allclose(infer["structure_module"]["final_atom_positions"],
                               oneshot["structure_module"]["final_atom_positions"], atol=1e-3)
    assert float(infer["iptm"]) == pytest.approx(float(oneshot["iptm"]), abs=1e-4)
    cif = MMCIFParser(QUIET=True).get_structure("cif", split / "homo" / "ranked_0.cif")
    assert [c.id for c in cif[0]] == ["A", "B"]


def test_model_choice_follows_the_chains():
    """model=auto folds one chain with monomer presets and a complex with multimer ones; model=multimer
    folds a single chain as a complex of one; --complex on one record too; monomer presets refuse a complex."""
    monomer, heterodimer = parse_fasta_targets(f">m\n{CRAMBIN}\n>c\n{ALPHA}:{BETA}\n")
    (single,) = parse_fasta_targets(f">s\n{CRAMBIN}\n", complex=True)

    def infers(overrides, target):
        return [s.name for s in target_stages(compose_config(overrides), "predict", target) if s.name.startswith("infer")]
    assert infers([], monomer) == [f"infer_model_{i}_ptm" for i in range(1, 6)]
    assert infers([], heterodimer) == [f"infer_model_{i}_multimer_v3_pred_{k}" for i in range(1, 6) for k in range(5)]
    for target, overrides in ((monomer, ["model=multimer"]), (single, [])):
        names = [s.name for s in target_stages(compose_config(overrides + OVERRIDES), "predict", target)]
        assert "search_uniprot_A" in names and "search_pdb70" not in names
        assert [n for n in names if n.startswith("infer")] == [f"infer_{n}" for n in PREDICTIONS]
    with pytest.raises(InputError, match=r"^c \(2 chain\(s\)\): model.kind=monomer .* model=auto"):
        target_stages(compose_config(["model=monomer_ptm"]), "predict", heterodimer)
    with pytest.raises(InputError, match="model.multimer_names lists model_1_ptm, which is not a multimer preset"):
        target_stages(compose_config(["model.multimer_names=[model_1_ptm]"]), "predict", heterodimer)


def test_a_complex_too_big_for_memory_is_refused_up_front_with_numbers():
    from af2cpu.scheduler.batch import too_long

    chain = "A" * 900
    big, single = parse_fasta_targets(f">big\n{chain}:{chain}:{chain}\n>single\n{chain}\n")
    refused = too_long([big, single], compose_config(["runtime.memory_limit=4G"]))
    # All chains together decide (3 × 900 residues), with the multimer presets; one chain of 900 fits.
    assert list(refused) == ["big"]
    assert refused["big"].startswith("big (3 chains), 2700 residues: ") and "memory limit is 4.00 GiB" in refused["big"]
