"""The output folder's files: AlphaFold2's formats kept exactly, pickle never needed to read them."""

import json
import os
import pickle

import numpy as np
import pytest

from af2cpu import formats, summary
from af2cpu import io as afio
from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.layout import BatchDir, TargetDir
from af2cpu.model.confidence import confidence_metrics

# The first 30 residues of ubiquitin (PDB 1UBI, tests/data/structures/1ubi.pdb).
QUERY = "MQIFVKTLTGKTITLEVEPSDTIENVKAKI"


def model_output(
    rng: np.random.Generator, length: int, num_msa: int = 8, ptm: bool = True, confidence: float = 0.0
) -> dict:
    """A model output dict with the reference's names and exact shapes: random head logits, with
    pLDDT, PAE, pTM and ranking_confidence derived from them by the model's own confidence code.

    ``confidence`` skews the pLDDT logits towards high (> 0) or low (< 0) bins.
    """
    aatype = np.array([rc.restype_order[a] for a in QUERY[:length]])
    heads = {
        "predicted_lddt": {
            "logits": (2.0 * rng.normal(size=(length, 50)) + confidence * np.linspace(-1, 1, 50)).astype(np.float32)
        },
    }
    if ptm:
        heads["predicted_aligned_error"] = {
            "logits": (2.0 * rng.normal(size=(length, length, 64))).astype(np.float32),
            "breaks": np.linspace(0.0, 31.0, 63, dtype=np.float32),
        }
    out = {
        **heads,
        "structure_module": {
            "final_atom_positions": rng.normal(0.0, 10.0, (length, 37, 3)).astype(np.float32),
            "final_atom_mask": rc.STANDARD_ATOM_MASK[aatype].astype(np.float32),
        },
        "distogram": {
            "logits": rng.normal(size=(length, length, 64)).astype(np.float32),
            "bin_edges": np.linspace(2.3125, 21.6875, 63, dtype=np.float32),
        },
        "experimentally_resolved": {"logits": rng.normal(size=(length, 37)).astype(np.float32)},
        "masked_msa": {"logits": rng.normal(size=(num_msa, length, 23)).astype(np.float32)},
        "representations": {
            "single": rng.normal(size=(length, 384)).astype(np.float32),
            "pair": rng.normal(size=(length, length, 128)).astype(np.float32),
            "msa_first_row": rng.normal(size=(length, 256)).astype(np.float32),
            "structure_module": rng.normal(size=(length, 384)).astype(np.float32),
        },
        "num_recycles": np.asarray(3),
        "tol": np.asarray(0.4, dtype=np.float32),
    }
    out.update(confidence_metrics(heads))
    return out


def assert_trees_equal(actual, expected):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected)
        for key in expected:
            assert_trees_equal(actual[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_trees_equal(a, e)
    else:
        expected = np.asarray(expected)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)


def test_result_npz_round_trips_nested_outputs_and_per_recycle_lists_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    out = model_output(rng, 30)
    out["per_recycle"] = [
        {"final_atom_positions": rng.normal(size=(30, 37, 3)).astype(np.float32), "plddt": rng.uniform(0, 100, 30)}
        for _ in range(3)
    ]
    out["model_name"] = "model_1_ptm"
    out["absent_head"] = None
    path = tmp_path / "result_model_1_ptm.npz"
    afio.save_result_npz(path, out)

    with np.load(path, allow_pickle=False) as npz:
        assert "structure_module/final_atom_positions" in npz.files
        assert "per_recycle/#2/plddt" in npz.files
        assert npz["model_name"].dtype.kind == "U"
    loaded = afio.load_result_npz(path)
    del out["absent_head"]
    assert_trees_equal(loaded, out)
    assert os.listdir(tmp_path) == ["result_model_1_ptm.npz"]


def test_load_result_npz_reads_only_the_requested_entries(tmp_path):
    out = model_output(np.random.default_rng(1), 30)
    afio.save_result_npz(tmp_path / "r.npz", out)
    part = afio.load_result_npz(tmp_path / "r.npz", ["plddt", "distogram/bin_edges"])
    assert set(part) == {"plddt", "distogram"}
    assert set(part["distogram"]) == {"bin_edges"}
    np.testing.assert_array_equal(part["plddt"], out["plddt"])


def test_result_npz_refuses_objects_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        afio.save_result_npz(tmp_path / "r.npz", {"bad": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="without '/'"):
        afio.save_result_npz(tmp_path / "r.npz", {"a/b": np.zeros(2)})
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "ranking_debug.json"
    afio.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), afio.atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["ranking_debug.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a mkstemp file
    with pytest.raises(FileNotFoundError, match="missing_target"):
        afio.atomic_write_text(tmp_path / "missing_target" / "timings.json", "{}")


def test_confidence_json_is_alphafold_db_format_with_its_categories():
    plddt = np.array([10.0, 49.999, 50.0, 69.994, 70.0, 89.99, 90.0, 100.0, 73.456789])
    payload = json.loads(formats.confidence_json(plddt))
    assert list(payload) == ["residueNumber", "confidenceScore", "confidenceCategory"]
    assert payload["residueNumber"] == list(range(1, 10))
    assert payload["confidenceScore"] == [10.0, 50.0, 50.0, 69.99, 70.0, 89.99, 90.0, 100.0, 73.46]
    assert payload["confidenceCategory"] == ["D", "D", "L", "L", "M", "M", "H", "H", "M"]
    assert " " not in formats.confidence_json(plddt)
    with pytest.raises(ValueError, match="pLDDT"):
        formats.confidence_json(np.array([101.0]))
    with pytest.raises(ValueError, match="rank 1"):
        formats.confidence_json(np.zeros((2, 2)))


@pytest.mark.reference
def test_confidence_and_pae_json_equal_deepminds_text():
    notebook_utils = pytest.importorskip("alphafold.notebooks.notebook_utils")
    rng = np.random.default_rng(2)
    pae = rng.uniform(0, 31.75, (30, 30)).astype(np.float32)
    assert formats.pae_json(pae, 31.75) == notebook_utils.get_pae_json(pae, 31.75)


def test_pae_json_is_alphafold_db_format_rounded_to_one_decimal():
    pae = np.array([[0.04, 13.16], [20.15, 0.0]], dtype=np.float32)
    text = formats.pae_json(pae, np.float32(31.75))
    assert text.startswith('[{"predicted_aligned_error":[[0.0,13.2],[20.1,0.0]]')
    payload = json.loads(text)
    assert payload == [{"predicted_aligned_error": [[0.0, 13.2], [20.1, 0.0]], "max_predicted_aligned_error": 31.75}]
    with pytest.raises(ValueError, match="square"):
        formats.pae_json(np.zeros((2, 3)), 31.75)


def test_monomer_ptm_models_rank_by_mean_plddt_not_ptm():
    rng = np.random.default_rng(3)
    outs = {f"model_{i}_ptm": model_output(rng, 30, confidence=c) for i, c in zip(range(1, 6), [0, 9, -3, 3, 1])}
    confidences = {name: float(out["ranking_confidence"]) for name, out in outs.items()}
    ptms = {name: float(out["ptm"]) for name, out in outs.items()}
    order = formats.rank_models(confidences)
    assert order[0] == "model_2_ptm"
    means = [np.mean(outs[name]["plddt"]) for name in order]
    assert means == sorted(means, reverse=True)
    assert order != sorted(ptms, key=ptms.get, reverse=True)  # pTM would rank them otherwise

    payload = json.loads(formats.ranking_debug_json(confidences, ptms=ptms))
    assert set(payload) == {"plddts", "order", "ptms"}
    assert payload["order"] == order
    assert payload["plddts"] == pytest.approx({n: float(np.mean(o["plddt"])) for n, o in outs.items()})
    assert payload["ptms"] == pytest.approx(ptms)
    assert json.dumps(payload, indent=4) == formats.ranking_debug_json(confidences, ptms=ptms)


def test_multimer_ranks_by_iptm_plus_ptm_and_untrained_params_is_flagged():
    confidences = {"model_1_multimer_v3_pred_0": 0.42, "model_2_multimer_v3_pred_0": 0.77,
                   "model_3_multimer_v3_pred_0": 0.42}
    payload = json.loads(formats.ranking_debug_json(confidences, multimer=True, untrained_params=True))
    assert payload["order"] == ["model_2_multimer_v3_pred_0", "model_1_multimer_v3_pred_0",
                                "model_3_multimer_v3_pred_0"]
    assert "iptm+ptm" in payload and "plddts" not in payload
    assert payload["untrained_params"] is True
    assert "untrained_params" not in json.loads(formats.ranking_debug_json(confidences))


def test_ranked_files_are_named_by_rank(tmp_path):
    order = ["model_3_ptm", "model_1_ptm"]
    assert [p.name for p in TargetDir(tmp_path).ranked(1)] == ["ranked_1.pdb", "ranked_1.cif"]
    formats.write_ranked_structures(
        TargetDir(tmp_path), order, {"model_1_ptm": "PDB1", "model_3_ptm": "PDB3"}, {"model_1_ptm": "CIF1", "model_3_ptm": "CIF3"}
    )
    assert (tmp_path / "ranked_0.pdb").read_text() == "PDB3"
    assert (tmp_path / "ranked_1.cif").read_text() == "CIF1"


def test_timings_json_has_start_end_and_duration_per_stage_in_start_order(tmp_path):
    stages = {"features": (1000.0, 1002.5), "jackhmmer_uniref90": (900.0, 950.25)}
    with pytest.raises(KeyError), formats.timed(stages, "predict_model_1_ptm"):
        raise KeyError("the stage failed")
    start, end = stages["predict_model_1_ptm"]
    assert 0 <= end - start < 5
    payload = json.loads(formats.timings_json(stages))
    assert list(payload)[:2] == ["jackhmmer_uniref90", "features"]
    assert payload["features"] == {"start": 1000.0, "end": 1002.5, "duration": 2.5}
    afio.atomic_write_text(tmp_path / "timings.json", formats.timings_json(stages))
    assert formats.load_timings(tmp_path / "timings.json")["jackhmmer_uniref90"] == (900.0, 950.25)


def raw_features(num_templates: int = 2) -> dict:
    """AlphaFold2's raw monomer features for QUERY, strings as object arrays of bytes as it makes them."""
    length = len(QUERY)
    msa = np.array([[rc.HHBLITS_AA_TO_ID[c] for c in QUERY]] * 3, dtype=np.int32)
    msa[1, :5] = rc.HHBLITS_AA_TO_ID["-"]
    return {
        "aatype": rc.sequence_to_onehot(QUERY, rc.restype_order_with_x).astype(np.int32),
        "between_segment_residues": np.zeros(length, dtype=np.int32),
        "domain_name": np.array([b"T1 ubiquitin"], dtype=object),
        "residue_index": np.arange(length, dtype=np.int32),
        "seq_length": np.full(length, length, dtype=np.int32),
        "sequence": np.array([QUERY.encode()], dtype=object),
        "msa": msa,
        "deletion_matrix_int": np.zeros((3, length), dtype=np.int32),
        "num_alignments": np.full(length, 3, dtype=np.int32),
        "msa_species_identifiers": np.array([b"", b"HUMAN", b"YEAST"], dtype=object),
        "template_aatype": np.zeros((num_templates, length, 22), dtype=np.float32),
        "template_all_atom_masks": np.zeros((num_templates, length, 37), dtype=np.float32),
        "template_all_atom_positions": np.zeros((num_templates, length, 37, 3), dtype=np.float32),
        "template_domain_names": np.array([b"1ubi_A", b"1ubq_A"][:num_templates], dtype=object),
        "template_sequence": np.array([QUERY.encode()] * num_templates, dtype=object),
        "template_sum_probs": np.ones((num_templates, 1), dtype=np.float32),
    }


def test_features_npz_round_trips_alphafold_string_features_without_pickle(tmp_path):
    features = raw_features()
    path = tmp_path / "features.npz"
    afio.save_features_npz(path, features)
    with np.load(path, allow_pickle=False) as npz:
        assert npz["sequence"].dtype.kind == "S"
        assert npz["sequence"][0] == QUERY.encode()
    loaded = afio.load_features_npz(path)
    assert set(loaded) == set(features)
    for name, value in features.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        assert loaded[name].tolist() == value.tolist(), name
    assert loaded["msa_species_identifiers"][0] == b""


def test_features_with_zero_templates_and_unsaveable_objects(tmp_path):
    afio.save_features_npz(tmp_path / "f.npz", raw_features(num_templates=0))
    loaded = afio.load_features_npz(tmp_path / "f.npz")
    assert loaded["template_domain_names"].shape == (0,) and loaded["template_domain_names"].dtype == object
    with pytest.raises(InputError, match="'bad'.*int"):
        afio.save_features_npz(tmp_path / "g.npz", {"bad": np.zeros(2, dtype=object)})
    assert not (tmp_path / "g.npz").exists()


def test_features_pkl_is_written_for_old_tools(tmp_path):
    features = raw_features()
    afio.save_features_pkl(tmp_path / "features.pkl", features)
    with open(tmp_path / "features.pkl", "rb") as f:
        loaded = pickle.load(f)  # an old tool's view; af2cpu itself never reads this file
    assert loaded["sequence"][0] == QUERY.encode()
    np.testing.assert_array_equal(loaded["msa"], features["msa"])


def test_batch_summary_json_and_tsv_list_every_target(tmp_path):
    targets = [
        summary.TargetSummary("T1", "done", length=30, best_model="model_2_ptm", mean_plddt=87.123456, ptm=0.8123),
        summary.TargetSummary("T2", "failed", length=12, failure_reason='jackhmmer failed:\n\t"uniref90.fasta"\tmissing'),
        summary.TargetSummary("T3", "pending", length=99),
    ]
    summary.write_batch_summary(BatchDir(tmp_path), targets)
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert payload["counts"] == {"done": 1, "failed": 1, "pending": 1, "skipped": 0}
    assert payload["targets"][1]["failure_reason"] == 'jackhmmer failed:\n\t"uniref90.fasta"\tmissing'
    assert summary.read_batch_summary(BatchDir(tmp_path)) == targets

    rows = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()]
    header = rows[0]
    assert header[:4] == ["target_id", "status", "length", "best_model"]
    assert all(len(row) == len(header) for row in rows)
    t1, t2 = dict(zip(header, rows[1])), dict(zip(header, rows[2]))
    assert t1["mean_plddt"] == "87.1235" and t1["ptm"] == "0.8123" and t1["failure_reason"] == ""
    assert t2["status"] == "failed" and t2["failure_reason"] == 'jackhmmer failed: "uniref90.fasta" missing'
    with pytest.raises(ValueError, match="failure_reason"):
        summary.TargetSummary("T4", "failed")
    with pytest.raises(ValueError, match="status"):
        summary.TargetSummary("T4", "running")
