"""The features of complexes against DeepMind's AlphaFold-Multimer data pipeline, on the same searches.

One module-scoped run of the real tools (our search registry's multimer plan: jackhmmer on UniRef90,
MGnify and UniProt, hhblits on BFD + UniRef30, hmmbuild + hmmsearch on pdb_seqres) on human
haemoglobin alpha and beta from the bundled mini databases feeds every test. DeepMind's
``pipeline_multimer.DataPipeline`` then reads those very result files (its ``use_precomputed_msas``
mode; its hmmsearch runner is replaced by one that returns our hmmsearch output for the chain: the
only tool runner patched), parses them with its own parsers, realigns templates with its own
featurizer and the real kalign, and pairs and merges with its own code. Its ``make_msa_features`` is
DeepMind's 2.3 (rows de-duplicated): the reference extra packages ColabFold's copy, which switched the
de-duplication off. The examples must be equal: every key, dtype, shape and value.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from af2cpu.cli import features as features_cli
from af2cpu.config import compose_config
from af2cpu.data import DATA_DIR
from af2cpu.io import load_features_npz
from af2cpu.layout import TargetDir
from af2cpu.preprocessing import multimer, searches
from af2cpu.preprocessing.inputs import read_fasta_targets

MINI = DATA_DIR / "mini"
HEMOGLOBIN = DATA_DIR / "examples" / "hemoglobin_ab.fasta"

pytestmark = pytest.mark.slow


def _features_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    features_cli.add_arguments(parser)
    return features_cli.run(parser.parse_intermixed_args(list(argv)))


@pytest.fixture(scope="module")
def haemoglobin():
    (target,) = read_fasta_targets(HEMOGLOBIN)
    return target


@pytest.fixture(scope="module")
def batch(haemoglobin, tmp_path_factory):
    """`af2cpu features` on a batch of a monomer (ubiquitin), the alpha/beta heterodimer and the beta
    homodimer, with the real tools on the mini databases: its output folder."""
    work = tmp_path_factory.mktemp("batch")
    beta = haemoglobin.chains[1].sequence
    fasta = work / "batch.fasta"
    fasta.write_text((DATA_DIR / "examples" / "ubiquitin.fasta").read_text() + HEMOGLOBIN.read_text()
                     + f">beta_homodimer two copies of HBB_HUMAN\n{beta}:{beta}\n")
    assert _features_command(str(fasta), "--out", str(work / "out"), "--cpus", "2") == 0
    return work / "out"


@pytest.fixture(scope="module")
def chain_results(haemoglobin, batch):
    """Each distinct chain's multimer search results, as the batch made them: {sequence: [(search, file)]}."""
    plan = searches.plan_searches("mini", pipeline=searches.MULTIMER)
    msas = batch / "hemoglobin_ab" / "msas"
    return {c.sequence: searches.search_results(plan, msas / c.id) for c in haemoglobin.chains}


def test_the_multimer_plan_searches_uniprot_and_pdb_seqres_not_pdb70():
    names = [s.name for s in searches.plan_searches("mini", pipeline=searches.MULTIMER)]
    assert names == ["uniref90", "mgnify", "bfd_uniref", "pdb_seqres", "uniprot"]
    assert [s.name for s in searches.plan_searches("mini")] == ["uniref90", "mgnify", "bfd_uniref", "pdb70"]


def test_assembly_ids_follow_entities():
    chains = multimer.assembly_chains([("A", "AAA"), ("B", "CCC"), ("C", "AAA")])
    assert [(c.chain_id, c.entity_id, c.sym_id, c.asym_id) for c in chains] == [
        ("A", 1, 1, 1), ("C", 1, 2, 2), ("B", 2, 1, 3)]


def _reference_features(sequences: list[str], results, tmp_path: Path) -> dict:
    """DeepMind's multimer example for the chains `sequences`, from our search results."""
    pipeline = pytest.importorskip("alphafold.data.pipeline")
    from alphafold.data import parsers as ref_parsers
    from alphafold.data import pipeline_multimer
    from alphafold.data import templates as ref_templates
    from alphafold.data.tools import hmmsearch

    def deepmind_make_msa_features(msas):  # AlphaFold 2.3: a row already seen in an earlier MSA is dropped
        seen, kept = set(), []
        for msa in msas:
            rows = [i for i, s in enumerate(msa.sequences) if s not in seen and not seen.add(s)]
            if rows:
                kept.append(ref_parsers.Msa([msa.sequences[i] for i in rows], [msa.deletion_matrix[i] for i in rows],
                                            [msa.descriptions[i] for i in rows]))
        return colabfold_make_msa_features(kept)

    class OurHmmsearchOutput(hmmsearch.Hmmsearch):
        """The tool runner: our hmmsearch result of the chain whose UniRef90 MSA the pipeline gives."""

        def query(self, msa_sto: str) -> str:
            query_sequence = ref_parsers.parse_stockholm(msa_sto).sequences[0]
            return dict(results[query_sequence])[searches.SEARCHES["pdb_seqres"]].read_text()

    colabfold_make_msa_features = pipeline.make_msa_features
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(pipeline, "make_msa_features", deepmind_make_msa_features)
    try:
        msa_dir = tmp_path / "msas"
        for chain_id, sequence in zip("ABCDEFGH", sequences):
            (msa_dir / chain_id).mkdir(parents=True, exist_ok=True)
            for search, path in results[sequence]:
                if search.name != "pdb_seqres":  # the pipeline always runs its template search
                    shutil.copyfile(path, msa_dir / chain_id / search.output)
        db = compose_config([]).db
        monomer = pipeline.DataPipeline(
            jackhmmer_binary_path=shutil.which("jackhmmer"), hhblits_binary_path=shutil.which("hhblits"),
            uniref90_database_path=db.uniref90, mgnify_database_path=db.mgnify, bfd_database_path=db.bfd,
            uniref30_database_path=db.uniref30, small_bfd_database_path=None,
            template_searcher=OurHmmsearchOutput(binary_path=shutil.which("hmmsearch"),
                                                 hmmbuild_binary_path=shutil.which("hmmbuild"),
                                                 database_path=db.pdb_seqres),
            template_featurizer=ref_templates.HmmsearchHitFeaturizer(
                mmcif_dir=db.template_mmcif_dir, max_template_date="2100-01-01", max_hits=20,
                kalign_binary_path=shutil.which("kalign"), release_dates_path=None,
                obsolete_pdbs_path=db.obsolete_pdbs),
            use_small_bfd=False, use_precomputed_msas=True)
        reference = pipeline_multimer.DataPipeline(
            monomer_data_pipeline=monomer, jackhmmer_binary_path=shutil.which("jackhmmer"),
            uniprot_database_path=db.uniprot, use_precomputed_msas=True)
        fasta = tmp_path / "complex.fasta"
        fasta.write_text("".join(f">chain {i}\n{s}\n" for i, s in enumerate(sequences)))
        return reference.process(str(fasta), str(msa_dir))
    finally:
        monkeypatch.undo()


def _assert_equal_examples(ours: dict, expected: dict) -> None:
    assert sorted(ours) == sorted(expected)
    for name, value in expected.items():
        got = ours[name]
        assert (got.dtype, got.shape) == (value.dtype, value.shape), name
        np.testing.assert_array_equal(got, value, err_msg=name)


def _ours(sequences, results):
    chains = list(zip("ABCDEFGH", sequences))
    settings = searches.template_settings(compose_config([]))
    return multimer.complex_features_from_files(chains, results, settings)


@pytest.mark.reference
def test_heterodimer_features_equal_deepmind_pipeline(haemoglobin, chain_results, tmp_path):
    sequences = [c.sequence for c in haemoglobin.chains]
    ours = _ours(sequences, chain_results)
    _assert_equal_examples(ours.features, _reference_features(sequences, chain_results, tmp_path))
    # Real rows were paired by species (the mini UniProt holds alpha and beta of many species), and
    # the unpaired rows below them are block-diagonal.
    example = ours.features
    paired = int(np.sum(np.all(example["msa"][:, :141] != 21, axis=1) & np.all(example["msa"][:, 141:] != 21, axis=1)
                        & (example["msa_mask"][:, 0] > 0)))
    assert paired > 10, paired
    assert min(ours.pairing_sizes.values()) > 50
    assert example["asym_id"].tolist() == [1.0] * 141 + [2.0] * 146
    assert example["entity_id"].tolist() == [1.0] * 141 + [2.0] * 146
    assert example["template_aatype"].shape == (4, 287)
    assert int(example["num_templates"]) >= 1


@pytest.mark.reference
def test_a2b_heterotrimer_features_equal_deepmind_pipeline(haemoglobin, chain_results, tmp_path):
    """Two copies of alpha and one beta: pairing over three chains, then alpha's copies side by side."""
    alpha, beta = (c.sequence for c in haemoglobin.chains)
    ours = _ours([alpha, beta, alpha], chain_results)
    _assert_equal_examples(ours.features, _reference_features([alpha, beta, alpha], chain_results, tmp_path))
    assert [(c.chain_id, c.entity_id, c.sym_id) for c in ours.chains] == [("A", 1, 1), ("C", 1, 2), ("B", 2, 1)]


@pytest.mark.reference
def test_one_chain_multimer_features_equal_deepmind_pipeline(haemoglobin, chain_results, tmp_path):
    beta = haemoglobin.chains[1].sequence
    ours = _ours([beta], {beta: chain_results[beta]})
    _assert_equal_examples(ours.features, _reference_features([beta], chain_results, tmp_path))


@pytest.mark.reference
def test_homodimer_features_equal_deepmind_pipeline(haemoglobin, chain_results, tmp_path):
    beta = haemoglobin.chains[1].sequence
    ours = _ours([beta, beta], {beta: chain_results[beta]})
    _assert_equal_examples(ours.features, _reference_features([beta, beta], chain_results, tmp_path))
    assert ours.features["sym_id"].tolist() == [1.0] * 146 + [2.0] * 146
    assert ours.pairing_sizes == {}  # a homomer is not paired


def test_batch_writes_monomer_and_complex_features_and_searches_a_homodimer_chain_once(batch, haemoglobin):
    mono = load_features_npz(batch / "1UBI_A" / "features.npz")
    assert mono["aatype"].ndim == 2 and "asym_id" not in mono  # the monomer's raw features, as before
    assert (batch / "1UBI_A" / "msas" / "pdb_hits.hhr").is_file()
    for target_id, length in (("hemoglobin_ab", 287), ("beta_homodimer", 292)):
        example = load_features_npz(batch / target_id / "features.npz")
        assert sorted(example) == sorted(multimer.EXAMPLE_KEYS), target_id
        assert example["aatype"].shape == (length,) and example["msa"].shape[1] == length
    homo = TargetDir(batch / "beta_homodimer")
    records = sorted(homo.stage_of_record(p) for p in homo.stage_records())
    assert records == ["features", "search_bfd_uniref_A", "search_mgnify_A", "search_pdb_seqres_A",
                       "search_uniprot_A", "search_uniref90_A"]  # chain B is chain A's copy: not searched
    assert sorted(p.name for p in homo.msas.iterdir()) == ["A"]
    # Beta was searched once in the batch, for the heterodimer: the homodimer copied its results.
    for name in ("uniref90_hits.sto.json", "uniprot_hits.sto.json", "pdb_hits.sto.json"):
        assert (homo.msas / "A" / name).read_bytes() == (batch / "hemoglobin_ab" / "msas" / "B" / name).read_bytes()
    info = json.loads((batch / "hemoglobin_ab" / "target.json").read_text())
    assert [c["id"] for c in info["chains"]] == ["A", "B"] and info["description"] == haemoglobin.description
    report = json.loads((batch / "beta_homodimer" / "features_report.json").read_text())
    assert [(c["id"], c["entity_id"], c["sym_id"], c["searched_as"]) for c in report["chains"]] == [
        ("A", 1, 1, "A"), ("B", 1, 2, "A")]


def test_complex_flag_on_a_two_record_file_gives_the_features_of_the_colon_record(batch, haemoglobin, tmp_path):
    alpha, beta = haemoglobin.chains
    fasta = tmp_path / "two_records.fasta"
    fasta.write_text(f">hemoglobin_ab alpha\n{alpha.sequence}\n>HBB_HUMAN beta\n{beta.sequence}\n")
    out = tmp_path / "out"
    assert _features_command(str(fasta), "--complex", "--out", str(out), "--precomputed-msas", str(batch)) == 0
    ours, expected = (load_features_npz(d / "hemoglobin_ab" / "features.npz") for d in (out, batch))
    assert sorted(ours) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    chains = json.loads((out / "hemoglobin_ab" / "target.json").read_text())["chains"]
    assert [c["description"] for c in chains] == ["hemoglobin_ab alpha", "HBB_HUMAN beta"]


def test_a_complex_has_per_chain_search_stages_then_the_multimer_models(haemoglobin):
    from af2cpu.scheduler.stages import target_stages

    cfg = compose_config([])
    names = [s.name for s in target_stages(cfg, "features", haemoglobin)]
    assert names[:5] == ["search_uniref90_A", "search_mgnify_A", "search_bfd_uniref_A", "search_pdb_seqres_A",
                         "search_uniprot_A"] and names[-1] == "features" and len(names) == 11
    predict = [s.name for s in target_stages(cfg, "predict", haemoglobin)]
    assert predict[:11] == names and predict[11] == "infer_model_1_multimer_v3_pred_0"
    # search=mmseqs2 (test_mmseqs_search): each chain's MMseqs2 searches, UniProt's for pairing.
    mmseqs2 = [s.name for s in target_stages(compose_config(["search=mmseqs2"]), "features", haemoglobin)]
    assert mmseqs2[:3] == ["search_mmseqs2_A", "search_mmseqs2_pdb70_A", "search_mmseqs2_uniprot_A"]


def test_report_counts_a_complexs_residues(batch):
    from af2cpu.scheduler.report import target_report

    assert target_report(TargetDir(batch / "hemoglobin_ab"), "hemoglobin_ab", None).length == 287


def test_complex_flag_on_a_one_record_file_is_a_complex_of_one_chain_with_a_note(batch, tmp_path, capsys):
    fasta = tmp_path / "beta.fasta"
    fasta.write_text((DATA_DIR / "examples" / "HBB_HUMAN.fasta").read_text().replace(">HBB_HUMAN", ">beta_homodimer"))
    out = tmp_path / "out"
    assert _features_command(str(fasta), "--complex", "--out", str(out), "--precomputed-msas", str(batch)) == 0
    assert "--complex with a single chain: beta_homodimer gets AlphaFold-Multimer's features of one chain" in (
        capsys.readouterr().out)
    example = load_features_npz(out / "beta_homodimer" / "features.npz")
    assert sorted(example) == sorted(multimer.EXAMPLE_KEYS) and example["asym_id"].tolist() == [1.0] * 146
