"""`af2cpu features` end to end on the bundled mini databases, and its outputs against AlphaFold2's.

One module-scoped run of the real tools on the three example queries (HBB_HUMAN, ubiquitin and an
grass pollen allergen, MPA51_PHAAQ, with no homologues in the mini databases) feeds every test here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from af2cpu.cli import features as features_cli
from af2cpu.config import compose_config
from af2cpu.data import DATA_DIR
from af2cpu.errors import DatabaseError
from af2cpu.io import load_features_npz
from af2cpu.preprocessing import features, parsers, searches, templates
from af2cpu.preprocessing.inputs import read_fasta_targets

EXAMPLES = DATA_DIR / "examples"
MINI = DATA_DIR / "mini"
MMCIF_DIR = MINI / "pdb_mmcif" / "mmcif_files"
OBSOLETE = MINI / "pdb_mmcif" / "obsolete.dat"
NO_HOMOLOG = "MPA51_PHAAQ"  # af2cpu/data/examples/no_homologs.fasta (see af2cpu/data/NOTICE.md)
TARGETS = {"HBB_HUMAN.fasta": "HBB_HUMAN", "ubiquitin.fasta": "1UBI_A", "no_homologs.fasta": NO_HOMOLOG}
MSA_FILES = ["uniref90_hits.sto", "mgnify_hits.sto", "bfd_uniref_hits.a3m", "pdb_hits.hhr"]

pytestmark = pytest.mark.slow


def _features_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    features_cli.add_arguments(parser)
    return features_cli.run(parser.parse_intermixed_args(list(argv)))  # overrides may follow --out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    for example in TARGETS:
        assert _features_command(str(EXAMPLES / example), "--out", str(out), "--cpus", "2") == 0
    return out


def _sequence(target_id: str) -> str:
    (target,) = read_fasta_targets(EXAMPLES / next(f for f, t in TARGETS.items() if t == target_id))
    return target.sequence


def test_features_command_writes_alphafold_layout_for_every_example(out_dir):
    for target_id in TARGETS.values():
        target_dir = out_dir / target_id
        for name in MSA_FILES:
            assert (target_dir / "msas" / name).is_file(), name
            assert json.loads((target_dir / "msas" / (name + ".json")).read_text())["tool_version"]
        raw = load_features_npz(target_dir / "features.npz")
        assert raw["sequence"][0].decode() == _sequence(target_id)
        assert raw["msa"].shape[1] == len(_sequence(target_id))


def test_no_homolog_query_gives_single_sequence_msa_and_no_templates(out_dir):
    raw = load_features_npz(out_dir / NO_HOMOLOG / "features.npz")
    sequence = _sequence(NO_HOMOLOG)
    assert raw["num_alignments"].tolist() == [1] * len(sequence)
    np.testing.assert_array_equal(
        raw["msa"][0], features.msa_features([features.single_sequence_msa(sequence)])["msa"][0]
    )
    assert not raw["deletion_matrix_int"].any()
    report = json.loads((out_dir / NO_HOMOLOG / "features_report.json").read_text())
    assert report["msa_sizes"] == {"uniref90": 1, "bfd": 1, "mgnify": 1}
    # hhsearch always lists its 10 best hits, however improbable; AlphaFold2's filters reject every
    # one of them (short chance alignments covering under 10 % of the query): no template at all.
    assert report["templates"] == []
    assert raw["template_aatype"].shape[0] == 0
    assert raw["template_domain_names"].shape == (0,)


def test_rerun_reuses_every_result(out_dir):
    msas = out_dir / "HBB_HUMAN" / "msas"
    before = {p.name: p.stat().st_mtime_ns for p in msas.iterdir()}
    assert _features_command(str(EXAMPLES / "HBB_HUMAN.fasta"), "--out", str(out_dir)) == 0
    # A search that ran again would have replaced its result file (and its JSON).
    assert {p.name: p.stat().st_mtime_ns for p in msas.iterdir()} == before


def test_precomputed_msas_are_used_only_for_their_own_sequence(out_dir, tmp_path):
    cfg = compose_config([])
    plan = searches.plan_searches(cfg.db.preset)
    (hbb,) = read_fasta_targets(EXAMPLES / "HBB_HUMAN.fasta")
    (ubiquitin,) = read_fasta_targets(EXAMPLES / "ubiquitin.fasta")
    source = out_dir / "HBB_HUMAN" / "msas"
    assert all(searches.adopt_precomputed(s, hbb.sequence, source, tmp_path / "hbb", cfg.db) for s in plan)
    assert not any(searches.adopt_precomputed(s, ubiquitin.sequence, source, tmp_path / "ubi", cfg.db) for s in plan)
    other_db = {**cfg.db, "uniref90": str(MINI / "mgnify" / "mgy_clusters_2022_05.fa")}
    assert not searches.reusable(plan[0], hbb.sequence, source, other_db)


@pytest.fixture(scope="module")
def ref_pipeline():
    pytest.importorskip("alphafold.data.pipeline")
    from alphafold.data import parsers as ref_parsers
    from alphafold.data import pipeline as ref_pipeline_module

    return ref_parsers, ref_pipeline_module


@pytest.mark.reference
@pytest.mark.parametrize("target_id", list(TARGETS.values()))
def test_raw_sequence_and_msa_features_equal_reference(out_dir, ref_pipeline, target_id):
    ref_parsers, ref = ref_pipeline
    msas = out_dir / target_id / "msas"
    sequence = _sequence(target_id)
    ref_msas = [
        ref_parsers.parse_stockholm(
            ref_parsers.truncate_stockholm_msa(str(msas / "uniref90_hits.sto"), 10_000)
        ),
        ref_parsers.parse_a3m((msas / "bfd_uniref_hits.a3m").read_text()),
        ref_parsers.parse_stockholm(ref_parsers.truncate_stockholm_msa(str(msas / "mgnify_hits.sto"), 501)),
    ]
    ours = [
        parsers.read_stockholm(msas / "uniref90_hits.sto", 10_000),
        parsers.read_a3m(msas / "bfd_uniref_hits.a3m"),
        parsers.read_stockholm(msas / "mgnify_hits.sto", 501),
    ]
    description = read_fasta_targets(EXAMPLES / next(f for f, t in TARGETS.items() if t == target_id))[
        0
    ].description
    # The reference package (ColabFold's) dropped AlphaFold2's de-duplication; compare without it here
    # and check de-duplication separately below.
    expected = {
        **ref.make_sequence_features(sequence, description, len(sequence)),
        **ref.make_msa_features(ref_msas),
    }
    got = {
        **features.sequence_features(sequence, description),
        **features.msa_features(ours, deduplicate=False),
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        if value.dtype == object:
            assert got[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_msa_merge_order_and_deduplication(out_dir):
    msas = out_dir / "HBB_HUMAN" / "msas"
    parts = [
        parsers.read_stockholm(msas / "uniref90_hits.sto"),
        parsers.read_a3m(msas / "bfd_uniref_hits.a3m"),
        parsers.read_stockholm(msas / "mgnify_hits.sto"),
    ]
    merged = features.msa_features(parts)
    rows = [s for msa in parts for s in msa.sequences]
    first = list(dict.fromkeys(rows))  # first occurrences, in UniRef90, BFD, MGnify order
    assert len(first) < len(rows)
    assert merged["msa"].shape[0] == len(first)
    assert (
        merged["msa"].tolist()
        == features.msa_features([parsers.Msa(first, [[0] * len(first[0])] * len(first), [""] * len(first))])[
            "msa"
        ].tolist()
    )
    assert load_features_npz(out_dir / "HBB_HUMAN" / "features.npz")["msa"].tolist() == merged["msa"].tolist()


def _template_settings(date: str) -> templates.TemplateSettings:
    return templates.TemplateSettings(
        mmcif_dir=str(MMCIF_DIR), max_template_date=date, obsolete_pdbs_path=str(OBSOLETE)
    )


@pytest.mark.reference
@pytest.mark.parametrize("max_template_date", ["2100-01-01", "2010-01-01"])
def test_hbb_template_features_equal_reference(out_dir, max_template_date):
    ref_templates = pytest.importorskip("alphafold.data.templates")
    ref_parsers = pytest.importorskip("alphafold.data.parsers")
    hhr = out_dir / "HBB_HUMAN" / "msas" / "pdb_hits.hhr"
    sequence = _sequence("HBB_HUMAN")
    ours = templates.featurize_templates(
        sequence, parsers.read_hhr(hhr), _template_settings(max_template_date)
    )

    # ColabFold's packaging removed AlphaFold2's coverage/duplicate/length prefilters: give it only
    # the hits those filters keep.
    prefiltered = {s.index for s in ours.skipped if "released" not in s.reason}
    hits = [h for h in ref_parsers.parse_hhr(hhr.read_text()) if h.index not in prefiltered]
    featurizer = ref_templates.HhsearchHitFeaturizer(
        mmcif_dir=str(MMCIF_DIR), max_template_date=max_template_date, max_hits=20,
        kalign_binary_path=shutil.which("kalign"), release_dates_path=None, obsolete_pdbs_path=str(OBSOLETE),
    )  # fmt: skip
    expected = featurizer.get_templates(sequence, hits).features
    assert set(ours.features) == set(expected)
    for name, value in expected.items():
        got = ours.features[name]
        assert (got.dtype, got.shape) == (value.dtype, value.shape), name
        if value.dtype == object:
            assert got.tolist() == value.tolist(), name
        else:
            np.testing.assert_array_equal(got, value, err_msg=name)

    assert any("realigned with kalign" in w for w in ours.warnings)
    names = [n.decode() for n in ours.features["template_domain_names"]]
    if max_template_date == "2010-01-01":
        assert not any(n.startswith("2xhe") for n in names)
        assert any(s.name.startswith("2xhe") and "released 2011-06-29" in s.reason for s in ours.skipped)
    else:
        assert any(n.startswith("2xhe") for n in names)


@pytest.mark.reference
def test_hmmsearch_template_hits_and_features_equal_reference(out_dir, tmp_path):
    ref_parsers = pytest.importorskip("alphafold.data.parsers")
    ref_templates = pytest.importorskip("alphafold.data.templates")
    from af2cpu.preprocessing import tools

    sequence = _sequence("HBB_HUMAN")
    run = tools.search_pdb_seqres(
        out_dir / "HBB_HUMAN" / "msas" / "uniref90_hits.sto", MINI / "pdb_seqres" / "pdb_seqres.txt",
        tmp_path / "pdb_hits.sto", cpus=2,
    )  # fmt: skip
    text = run.path.read_text()
    expected_hits = ref_parsers.parse_hmmsearch_a3m(
        sequence, ref_parsers.convert_stockholm_to_a3m(text, remove_first_row_gaps=False), skip_first=False
    )
    result = features.raw_features_from_files(
        sequence, "HBB", [(searches.SEARCHES["pdb_seqres"], run.path)], _template_settings("2100-01-01")
    )
    ours_hits = parsers.parse_hmmsearch_a3m(
        sequence, parsers.stockholm_to_a3m(text, remove_first_row_gaps=False), skip_first=False
    )
    assert [dataclasses.asdict(h) for h in ours_hits] == [dataclasses.asdict(h) for h in expected_hits]
    assert expected_hits, "hmmsearch found no globin chain in the mini pdb_seqres"
    prefiltered = {s.index for s in result.templates.skipped if "released" not in s.reason}
    featurizer = ref_templates.HmmsearchHitFeaturizer(
        mmcif_dir=str(MMCIF_DIR), max_template_date="2100-01-01", max_hits=20,
        kalign_binary_path=shutil.which("kalign"), release_dates_path=None, obsolete_pdbs_path=str(OBSOLETE),
    )  # fmt: skip
    expected = featurizer.get_templates(
        sequence, [h for h in expected_hits if h.index not in prefiltered]
    ).features
    for name, value in expected.items():
        got = result.features[name]
        if value.dtype == object:
            assert got.tolist() == value.tolist(), name
        else:
            np.testing.assert_array_equal(got, value, err_msg=name)


def test_reduced_preset_searches_small_bfd_with_jackhmmer(tmp_path):
    cfg = compose_config(["db=reduced", f"db.root={MINI}"])
    plan = searches.plan_searches(cfg.db.preset)
    assert [s.output for s in plan] == [
        "uniref90_hits.sto",
        "mgnify_hits.sto",
        "small_bfd_hits.sto",
        "pdb_hits.hhr",
    ]
    (hbb,) = read_fasta_targets(EXAMPLES / "HBB_HUMAN.fasta")
    small_bfd = next(s for s in plan if s.name == "small_bfd")
    path, _ = searches.run_search(small_bfd, hbb, tmp_path, cfg.db, cpus=2)
    result = features.raw_features_from_files(hbb.sequence, hbb.description, [(small_bfd, path)], None)
    assert result.msa_sizes["small_bfd"] > 1
    assert result.features["template_aatype"].shape == (0,)


def test_missing_database_is_refused_before_any_target_with_the_fix(tmp_path):
    # checked before work: no search starts, nothing is written, the error names the file and the fix
    with pytest.raises(DatabaseError, match=r"uniref90: file .*absent\.fasta is missing") as err:
        _features_command(
            str(EXAMPLES / "no_homologs.fasta"),
            "--out",
            str(tmp_path / "out"),
            f"db.uniref90={tmp_path / 'absent.fasta'}",
        )
    assert "reinstall af2cpu" in str(err.value)
    assert not (tmp_path / "out").exists()
