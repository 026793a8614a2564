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

import shutil
from pathlib import Path

import numpy as np
import pytest

from af2cpu.config import compose_config
from af2cpu.data import DATA_DIR
from af2cpu.preprocessing import multimer, searches
from af2cpu.preprocessing.inputs import Target, read_fasta_targets

MINI = DATA_DIR / "mini"
HEMOGLOBIN = DATA_DIR / "examples" / "hemoglobin_ab.fasta"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def haemoglobin():
    (target,) = read_fasta_targets(HEMOGLOBIN)
    return target


@pytest.fixture(scope="module")
def chain_results(haemoglobin, tmp_path_factory):
    """Each distinct chain's multimer searches, run for real: {sequence: [(search, result file)]}."""
    cfg = compose_config([])
    plan = searches.plan_searches(cfg.db.preset, pipeline=searches.MULTIMER)
    out = tmp_path_factory.mktemp("chains")
    results = {}
    for chain in haemoglobin.chains:
        query = Target(f"chain_{chain.id}", chain.id, chain.sequence)
        for search in plan:
            searches.run_search(search, query, out / chain.id, cfg.db, cpus=2)
        results[chain.sequence] = searches.search_results(plan, out / chain.id)
    return results


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
def test_homodimer_features_equal_deepmind_pipeline(haemoglobin, chain_results, tmp_path):
    beta = haemoglobin.chains[1].sequence
    ours = _ours([beta, beta], {beta: chain_results[beta]})
    _assert_equal_examples(ours.features, _reference_features([beta, beta], chain_results, tmp_path))
    assert ours.features["sym_id"].tolist() == [1.0] * 146 + [2.0] * 146
    assert ours.pairing_sizes == {}  # a homomer is not paired
