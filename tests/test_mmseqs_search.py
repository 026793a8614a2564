"""`search=mmseqs2`: ColabFold's MMseqs2 search with the real `mmseqs` binary on the bundled ColabFold-layout
mini databases (af2cpu/data/mini/colabfold, built by scripts/build_mini_db.py).

One `af2cpu predict` of the three bundled examples (one MMseqs2 run for the batch, a 1-block network with
random params) is shared by the assertions, its A3M files included; one `af2cpu features` of the
haemoglobin complex (and its rerun) by those of complexes: each chain's MSA and templates as a monomer's,
and its rows to pair from MMseqs2 on the mini UniProt (an MMseqs2 copy of uniprot/uniprot.fasta). The oracle
is ColabFold's own search code (`colabfold.mmseqs.search`, colabfold 1.6.3, installed without its
dependencies: see docs/reference.md) run on the same queries, databases and binary: its A3M files must
equal ours byte for byte. The one change made to ColabFold's run: its searches pass `--prefilter-mode 0`,
an option MMseqs2 14 (Debian's) does not know; its only prefilter is the k-mer prefilter that mode 0
selects in later releases, so a wrapper drops the option before calling the same binary.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from distributed import LocalCluster

from af2cpu.cli import main
from af2cpu.common.residue_constants import HHBLITS_AA_TO_ID
from af2cpu.config import compose_config
from af2cpu.data import DATA_DIR, EXAMPLES_DIR
from af2cpu.errors import DatabaseError, ToolError
from af2cpu.io import load_features_npz
from af2cpu.layout import TargetDir
from af2cpu.model.presets import PRESETS
from af2cpu.preprocessing import features, mmseqs, multimer, parsers, searches
from af2cpu.preprocessing.inputs import Target, read_fasta_targets
from af2cpu.scheduler.batch import run_batch
from af2cpu.scheduler.cache import StageCache

pytestmark = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (Debian package mmseqs2) not installed")

EXAMPLES = ["HBB_HUMAN", "no_homologs", "ubiquitin"]


@pytest.fixture(scope="module")
def cfg():
    return compose_config(["search=mmseqs2"])


@pytest.fixture(scope="module")
def targets():
    return [read_fasta_targets(EXAMPLES_DIR / f"{name}.fasta")[0] for name in EXAMPLES]


OVERRIDES = ["search=mmseqs2", "params=random", "model.names=[model_1_ptm]", "model.num_recycle=0", "relax=none",
             "model.multimer_names=[model_1_multimer_v3]", "model.num_predictions_per_model=1"]


@pytest.fixture(scope="module")
def batch(targets, tmp_path_factory):
    """`predict` with search=mmseqs2 on the three examples and the haemoglobin complex (one MMseqs2 run for
    the batch's targets and chains, one on UniProt for the complex's chains, 2 threads), and the same
    command again. The networks have 1 Evoformer and 1 extra-MSA block (random params): the Dask workers
    are threads of this process, so they see the smaller presets."""
    root = tmp_path_factory.mktemp("mmseqs")
    fasta = root / "four.fasta"
    fasta.write_text("".join((EXAMPLES_DIR / f"{name}.fasta").read_text() for name in [*EXAMPLES, "hemoglobin_ab"]))
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        for preset in ("model_1_ptm", "model_1_multimer_v3"):
            patch.setitem(PRESETS, preset, PRESETS[preset].with_blocks(evoformer=1, extra_msa=1))
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
            overrides = [*OVERRIDES, f"scheduler.address={cluster.scheduler_address}"]
            first = run_batch(fasta, out, overrides, quiet=True)
            again = run_batch(fasta, out, overrides, quiet=True)
    search = searches.SEARCHES["mmseqs2"]
    pairs = [(t, TargetDir(out / t.id).msas) for t in targets]
    return search, out, pairs, (first, again)


def test_the_plan_of_search_mmseqs2(cfg):
    plan = searches.plan_searches(cfg.db.preset, protocol=cfg.search.protocol)
    assert [s.name for s in plan] == ["mmseqs2", "mmseqs2_pdb70"]
    assert searches.required_tools("mini", protocol="mmseqs2") == {"mmseqs", "hhsearch", "kalign"}
    assert {"colabfold_uniref30", "colabfold_envdb", "pdb70"} <= searches.required_databases("mini", protocol="mmseqs2")
    assert "uniref90" not in searches.required_databases("mini", protocol="mmseqs2")
    with pytest.raises(Exception, match="db=colabfold .* search=mmseqs2"):
        searches.plan_searches("colabfold")


def test_one_run_makes_each_target_its_a3m_with_provenance(batch, targets):
    search, _, pairs, _ = batch
    sizes = {}
    for target, msa_dir in pairs:
        result = msa_dir / search.output
        msa = parsers.read_a3m(result)
        assert msa.sequences[0] == target.sequence
        sizes[target.id] = len(msa)
        recorded = json.loads(searches.sidecar(result).read_text())
        # The batch's one run: the three targets and haemoglobin alpha (beta is HBB_HUMAN: searched once).
        assert recorded["tool"] == "mmseqs" and recorded["batch_size"] == 4
        assert searches.reusable(search, target.sequence, msa_dir, compose_config(["search=mmseqs2"]).db)
    # Measured: HBB 488 rows (UniRef30 + environmental, each with the query), the others the query twice.
    assert sizes["HBB_HUMAN"] > 400 and sizes["MPA51_PHAAQ"] == 2 and sizes["1UBI_A"] == 2


def test_a_second_batch_reuses_every_result(batch, cfg):
    search, _, pairs, _ = batch
    assert searches.run_batch_search(search, pairs, cfg.db, cpus=2) == []


def test_the_a3m_feeds_the_features(batch, cfg, targets):
    search, _, pairs, _ = batch
    target, msa_dir = pairs[0]
    result = features.raw_features_from_files(target.sequence, target.description,
                                              [(search, msa_dir / search.output)], None)
    rows = result.features["msa"]
    assert result.msa_sizes == {"colabfold": 488}
    # The query row repeated by the environmental MSA (and any equal rows) are de-duplicated.
    assert 1 < len(rows) < 488 and rows[0].tolist() == [HHBLITS_AA_TO_ID[aa] for aa in target.sequence]


def test_equals_colabfolds_own_search(batch, targets, cfg, tmp_path):
    """ColabFold's command line on the same three queries (one run), databases and binary."""
    pytest.importorskip("colabfold.mmseqs.search", reason="colabfold (see docs/reference.md) not installed")
    search, _, pairs, _ = batch
    wrapper = tmp_path / "mmseqs"
    wrapper.write_text(
        "#!/bin/sh\n# ColabFold's --prefilter-mode 0 is MMseqs2 14's only prefilter: drop the option.\n"
        'for a; do shift; if [ "$skip" = 1 ]; then skip=0; continue; fi\n'
        'if [ "$a" = --prefilter-mode ]; then skip=1; continue; fi; set -- "$@" "$a"; done\n'
        f'exec {shutil.which("mmseqs")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    queries = tmp_path / "queries.fasta"
    queries.write_text("".join(f">{t.id}\n{t.sequence}\n" for t in targets))
    dbbase = str(DATA_DIR / "mini" / "colabfold")
    assert cfg.db.colabfold_uniref30 == f"{dbbase}/uniref30_2302_db"
    out = tmp_path / "colabfold"
    # ColabFold's own command line: sensitivity 8 (its function's default; the CLI's --k-score default
    # needs MMseqs2 15), environmental database on, filtering on, 2 threads.
    proc = subprocess.run(
        [sys.executable, "-m", "colabfold.mmseqs.search", queries, dbbase, out, "--mmseqs", wrapper, "-s", "8",
         "--db1", "uniref30_2302_db", "--db3", "colabfold_envdb_202108_db", "--use-env", "1", "--filter", "1",
         "--threads", "2"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for target, msa_dir in pairs:
        theirs = (out / f"{target.id}.a3m").read_text()
        ours = (msa_dir / search.output).read_text()
        assert ours == theirs, target.id


def test_doctor_reports_mmseqs_and_db_check_an_unindexed_or_missing_database(tmp_path, capsys):
    assert main(["doctor", "search=mmseqs2", "params=random"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " mmseqs " in line)
    assert line.split()[:3] == ["ok", "mmseqs", "14-7e284+ds-1+b2"]
    # The bundled databases as a full-size set: unindexed, which db check names with the command.
    root = tmp_path / "cf"
    mini = DATA_DIR / "mini"
    shutil.copytree(mini / "colabfold", root)
    overrides = ["db=colabfold", f"db.root={root}", f"db.pdb70={mini}/pdb70/pdb70",
                 f"db.template_mmcif_dir={mini}/pdb_mmcif/mmcif_files",
                 f"db.obsolete_pdbs={mini}/pdb_mmcif/obsolete.dat", "search=mmseqs2"]
    assert main(["db", "check", *overrides]) == 1
    out = capsys.readouterr().out
    assert f"mmseqs createindex {root}/uniref30_2302_db" in out and "is not indexed" in out
    (root / "colabfold_envdb_202108_db_aln.index").unlink()
    assert main(["db", "check", *overrides]) == 1
    out = capsys.readouterr().out
    assert f"file {root}/colabfold_envdb_202108_db_aln.index is missing" in out and "tsv2exprofiledb" in out


def test_a_failing_step_is_named_with_its_output(tmp_path):
    prefix = tmp_path / "broken_db"
    for part in ("", "_seq", "_aln"):
        for ext in ("", ".index", ".dbtype"):
            (tmp_path / f"broken_db{part}{ext}").write_bytes(b"not a database")
    with pytest.raises(ToolError, match=r"MMseqs2 step 'search' failed: mmseqs failed .*\n.*"):
        mmseqs.search_msas(["MKTAYIAKQR"], str(prefix), str(prefix), [tmp_path / "out.a3m"], 1, 60)
    with pytest.raises(DatabaseError, match="missing_db.dbtype is missing"):
        mmseqs.search_msas(["MKTAYIAKQR"], str(tmp_path / "missing_db"), str(prefix), [tmp_path / "x.a3m"], 1, 60)


def test_a_batch_of_the_three_examples_predicts_end_to_end(batch, targets):
    """Every target predicted, each with its own stage records; the rerun finds everything cached (the
    complex's outcome too)."""
    _, out, _, (first, again) = batch
    assert first.exit_status == 0, [o.failure for o in first.outcomes]
    for target in targets:
        folder = TargetDir(out / target.id)
        assert list(json.loads(folder.features_report.read_text())["msa_sizes"]) == ["colabfold"]
        assert folder.ranked(0)[0].is_file() and StageCache(folder).lookup("search_mmseqs2") is not None
    assert json.loads(TargetDir(out / "HBB_HUMAN").features_report.read_text())["templates"][0].startswith("2gtl")
    assert again.exit_status == 0 and all(o.summary == r.summary for o, r in zip(again.outcomes, first.outcomes))


# ---------------------------------------------------------------------------------------------
# Complexes


@pytest.fixture(scope="module")
def complex_run(tmp_path_factory):
    """`af2cpu features` with search=mmseqs2 on the haemoglobin complex (its two chains in one MMseqs2 run
    per database), then the same command again: the target folder, and the first run's provenance files."""
    out = tmp_path_factory.mktemp("mmseqs_complex") / "out"
    argv = ["features", str(EXAMPLES_DIR / "hemoglobin_ab.fasta"), "--out", str(out), "--cpus", "2",
            "search=mmseqs2"]
    assert main(argv) == 0
    folder = TargetDir(out / "hemoglobin_ab")
    first = {str(p.relative_to(folder.path)): p.read_bytes() for p in folder.path.rglob("*.json")}
    assert main(argv) == 0
    (target,) = read_fasta_targets(EXAMPLES_DIR / "hemoglobin_ab.fasta")
    return folder, first, target


def test_a_complex_under_mmseqs2_searches_each_chain_as_a_monomer_and_uniprot_for_pairing(cfg):
    from af2cpu.scheduler.stages import target_stages

    plan = searches.plan_searches("mini", pipeline=searches.MULTIMER, protocol="mmseqs2")
    assert [s.name for s in plan] == ["mmseqs2", "mmseqs2_pdb70", "mmseqs2_uniprot"]
    assert [s.name for s in plan if s.pairing] == ["mmseqs2_uniprot"]
    needed = searches.required_databases("mini", searches.MULTIMER, "mmseqs2")
    assert "uniprot_mmseqs" in needed and "uniprot" not in needed and "pdb_seqres" not in needed
    assert "uniprot_mmseqs" not in searches.required_databases("mini", protocol="mmseqs2")  # a monomer's
    (target,) = read_fasta_targets(EXAMPLES_DIR / "hemoglobin_ab.fasta")
    assert [s.name for s in target_stages(cfg, "features", target)] == [
        "search_mmseqs2_A", "search_mmseqs2_pdb70_A", "search_mmseqs2_uniprot_A",
        "search_mmseqs2_B", "search_mmseqs2_pdb70_B", "search_mmseqs2_uniprot_B", "features"]


def test_each_chain_gets_its_msa_and_its_uniprot_hits_named_by_uniprot(complex_run):
    folder, _, target = complex_run
    species = []
    for chain, own in zip(target.chains, ("HBA_HUMAN", "HBB_HUMAN")):
        msas = folder.msas / chain.id
        unpaired = parsers.read_a3m(msas / "colabfold_mmseqs2.a3m")
        assert unpaired.sequences[0] == chain.sequence and len(unpaired) > 400  # measured 485 (A), 488 (B)
        hits = features.read_msa(msas / "mmseqs2_uniprot_hits.a3m", chain.sequence)
        # Every hit named by its whole UniProt header; the best one the chain's own entry.
        assert hits.descriptions[1].split()[0].endswith(f"|{own}")
        assert all(d.startswith(("sp|", "tr|")) for d in hits.descriptions[1:])
        species.append({parsers.species_id(d) for d in hits.descriptions[1:]})
        for name in ("colabfold_mmseqs2.a3m", "mmseqs2_uniprot_hits.a3m"):  # both chains in one run each
            assert json.loads(searches.sidecar(msas / name).read_text())["batch_size"] == 2
    assert len(species[0] & species[1]) > 100  # species with rows in both chains: pairs to find


def test_the_complex_pairs_rows_by_species_from_the_uniprot_hits(complex_run):
    folder, _, target = complex_run
    example = load_features_npz(folder.features)
    assert sorted(example) == sorted(multimer.EXAMPLE_KEYS) and example["aatype"].shape == (287,)
    report = json.loads(folder.features_report.read_text())
    assert report["msa_sizes"] == {"A": {"colabfold": 485}, "B": {"colabfold": 488}}  # measured
    assert report["pairing_msa_sizes"] == {"A": 542, "B": 531}  # the hits and the query, measured
    # Paired rows: both chains' halves filled (the unpaired rows below are block-diagonal).
    rows = example["msa"][: int(example["num_alignments"])]
    gap = multimer.GAP
    paired = int(np.sum(np.any(rows[:, :141] != gap, axis=1) & np.any(rows[:, 141:] != gap, axis=1)))
    # As many as AlphaFold-Multimer's species pairing finds in the two chains' UniProt hits.
    hits = [multimer.pairing_msa_features(features.read_msa(folder.msas / c.id / "mmseqs2_uniprot_hits.a3m",
                                                              c.sequence)) for c in target.chains]
    expected = multimer.SpeciesPairing([h["msa_all_seq"] for h in hits],
                                       [h["msa_species_identifiers_all_seq"] for h in hits]).rows()
    assert paired == len(expected) > 100  # measured 516, the queries' row included
    # Templates: hhsearch on PDB70 with each chain's A3M, as for a monomer; the multimer keeps 4.
    assert all(names[0].startswith("2gtl") for names in report["templates"].values())
    assert int(example["num_templates"]) == 4 and example["template_aatype"].shape == (4, 287)


def test_a_rerun_of_the_complex_reuses_every_search(complex_run, cfg):
    folder, first, target = complex_run
    again = {str(p.relative_to(folder.path)): p.read_bytes() for p in folder.path.rglob("*.json")}
    assert again == first  # provenance and stage records untouched: nothing searched or made again
    for chain in target.chains:
        assert StageCache(folder).lookup(f"search_mmseqs2_uniprot_{chain.id}") is not None
    search = searches.SEARCHES["mmseqs2_uniprot"]
    chains = [(Target(f"chain_{c.id}", c.description, c.sequence), folder.msas / c.id) for c in target.chains]
    assert searches.run_batch_search(search, chains, cfg.db, cpus=2) == []


def test_a_missing_uniprot_mmseqs2_database_is_named_with_its_command(tmp_path, capsys):
    missing = tmp_path / "uniprot_db"
    assert main(["db", "check", "search=mmseqs2", f"db.uniprot_mmseqs={missing}"]) == 0  # complexes only
    line = next(line for line in capsys.readouterr().out.splitlines() if "uniprot_mmseqs" in line)
    assert line.split()[0] == "absent" and f"mmseqs createdb <FASTA> {missing}" in line
    assert "(multimer only)" in line
    with pytest.raises(DatabaseError, match=r"UniProt MMseqs2 database: file .*uniprot_db.dbtype is missing"):
        mmseqs.search_pairing_msas(["MKTAYIAKQR"], str(missing), [tmp_path / "x.a3m"], 1, 60)


def test_a_complex_in_a_predict_batch_takes_its_chains_results_from_the_batch_runs(batch):
    """The Dask path: the complex's chain stages wait for the batch runs and reuse their results."""
    _, out, pairs, (first, _) = batch
    outcome = next(o for o in first.outcomes if o.target.id == "hemoglobin_ab")
    assert outcome.status == "done" and 0 <= outcome.summary["iptm"] <= 1
    folder = TargetDir(out / "hemoglobin_ab")
    # Written by the batch runs (a chain's own stage would record no batch size): the four distinct
    # sequences of the batch in one, the complex's two chains on UniProt in the other.
    for chain in "AB":
        for name, size in (("colabfold_mmseqs2.a3m", 4), ("mmseqs2_uniprot_hits.a3m", 2)):
            assert json.loads(searches.sidecar(folder.msas / chain / name).read_text())["batch_size"] == size
    hbb = {t.id: d for t, d in pairs}["HBB_HUMAN"]  # the same sequence as chain B: the same A3M
    assert (folder.msas / "B" / "colabfold_mmseqs2.a3m").read_bytes() == (hbb / "colabfold_mmseqs2.a3m").read_bytes()
    assert folder.ranked(0)[0].is_file()


def test_the_check_before_work_reads_the_mmseqs2_plan_of_monomers_and_complexes(tmp_path):
    from af2cpu.scheduler.batch import check_before_work

    cfg = compose_config(["params=random", "search=mmseqs2", f"db.uniprot_mmseqs={tmp_path / 'uniprot_db'}"])
    check_before_work(cfg, models=False)  # monomers do not read UniProt
    with pytest.raises(DatabaseError, match=r"uniprot_mmseqs: file .*uniprot_db.dbtype is missing"):
        check_before_work(cfg, models=False, multimer=[False, True])
    # db=colabfold is checked as search=mmseqs2's databases, each missing one named.
    colabfold = compose_config(["params=random", "search=mmseqs2", "db=colabfold", f"db.root={tmp_path}"])
    with pytest.raises(DatabaseError, match="colabfold_uniref30: file .*uniref30_2302_db.dbtype is missing"):
        check_before_work(colabfold, models=False)
