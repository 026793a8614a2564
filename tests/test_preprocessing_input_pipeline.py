"""The numpy input pipeline against AlphaFold2's (the reference's ``np_example_to_features``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from af2cpu.model.presets import get_preset
from af2cpu.preprocessing import features, parsers
from af2cpu.preprocessing import input_pipeline as ip

DATA = Path(__file__).parent / "data" / "preprocessing"


@pytest.fixture(scope="module")
def raw():
    """HBB_HUMAN's real jackhmmer MSA (39 distinct rows) and three templates of real-looking shape."""
    msa = parsers.read_stockholm(DATA / "stockholm" / "hbb_vs_globins45.sto")
    sequence = msa.sequences[0]
    num_res, num_templates = len(sequence), 3
    rng = np.random.default_rng(7)
    result = {**features.sequence_features(sequence, "HBB_HUMAN"), **features.msa_features([msa])}
    result.update(
        template_aatype=np.eye(22, dtype=np.float32)[rng.integers(0, 22, (num_templates, num_res))],
        template_all_atom_masks=(rng.random((num_templates, num_res, 37)) > 0.3).astype(np.float32),
        template_all_atom_positions=rng.normal(size=(num_templates, num_res, 37, 3)).astype(np.float32),
        template_domain_names=np.array([b"1abc_A", b"2def_B", b"3ghi_C"], dtype=object),
        template_sequence=np.array([b"x"] * num_templates, dtype=object),
        template_sum_probs=np.array([[90.0], [80.0], [70.0]], dtype=np.float32),
    )
    return result


def _reference_features(raw, num_clusters, max_extra, replace_fraction, seed, preset="model_1_ptm"):
    config = pytest.importorskip("alphafold.model.config")
    ref_features = pytest.importorskip("alphafold.model.features")
    cfg = config.model_config(preset)
    cfg.data.eval.masked_msa_replace_fraction = replace_fraction
    cfg.data.eval.max_msa_clusters = num_clusters + (
        4 if cfg.data.common.reduce_msa_clusters_by_max_templates else 0
    )
    cfg.data.common.max_extra_msa = max_extra
    return ref_features.np_example_to_features(raw, cfg, random_seed=seed)


@pytest.mark.reference
@pytest.mark.parametrize("num_clusters, max_extra", [(60, 5120), (12, 20)])
def test_deterministic_steps_equal_reference(raw, num_clusters, max_extra):
    """Given the reference's row choices, every feature is bit-identical (masking off).

    (60, 5120): fewer sequences than clusters, no extra MSA. (12, 20): clustering of extra rows into
    cluster profiles and a cropped extra MSA.
    """
    ref = _reference_features(raw, num_clusters, max_extra, replace_fraction=0.0, seed=3)
    settings = ip.PipelineSettings(
        num_msa_clusters=num_clusters,
        max_extra_msa=max_extra,
        masked_msa_replace_fraction=0.0,
        pad_to_fixed_size=True,
    )
    target = ip.prepare_target(raw, use_templates=True)
    row_of = {tuple(r): i for i, r in enumerate(target["msa"])}
    num_rows = target["msa"].shape[0]
    num_selected = min(num_clusters, num_rows)
    num_extra = min(max_extra, num_rows - num_selected)
    for sample in range(4):
        selected = [row_of[tuple(r)] for r in ref["true_msa"][sample][:num_selected]]
        rest = [i for i in range(num_rows) if i not in set(selected)]
        extra = [row_of[tuple(r)] for r in ref["extra_msa"][sample][:num_extra]]
        ours = ip.process_sample(
            target, settings, np.random.default_rng(0),
            msa_order=np.array(selected + rest), extra_keep=np.array([rest.index(i) for i in extra], dtype=np.int64),
        )  # fmt: skip
        assert set(ours) == set(ref)
        for name in ref:
            if name == "random_crop_to_size_seed":
                continue
            assert ours[name].dtype == ref[name].dtype, name
            np.testing.assert_array_equal(ours[name], ref[name][sample], err_msg=name)


@pytest.mark.reference
def test_output_layout_equals_reference_without_templates(raw):
    ref = _reference_features(raw, 512, 5120, 0.15, seed=0, preset="model_3_ptm")
    ours = ip.process_features(
        raw, ip.PipelineSettings.from_preset(get_preset("model_3_ptm"), pad_to_fixed_size=True), seed=0
    )
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {k: (v.shape, v.dtype) for k, v in ref.items()}


def test_unpadded_output_has_one_sample_per_recycle_and_real_rows_only(raw):
    settings = ip.PipelineSettings.from_preset(get_preset("model_1_ptm"))
    out = ip.process_features(raw, settings, seed=0)
    num_rows, num_res = raw["msa"].shape
    assert out["msa_feat"].shape == (4, num_rows, num_res, 49)
    assert out["extra_msa"].shape == (4, 0, num_res)
    assert out["template_aatype"].shape == (4, 3, num_res)
    assert out["seq_length"].tolist() == [num_res] * 4
    np.testing.assert_array_equal(out["template_mask"], 1.0)


def test_same_seed_same_features_other_seed_other_samples(raw):
    settings = ip.PipelineSettings(num_msa_clusters=16, max_extra_msa=8)
    a, b = ip.process_features(raw, settings, seed=5), ip.process_features(raw, settings, seed=5)
    c = ip.process_features(raw, settings, seed=6)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["true_msa"], c["true_msa"])
    assert not np.array_equal(a["true_msa"][0], a["true_msa"][1])  # resampled per recycle


def test_cluster_sampling_keeps_query_first_and_draws_rows_uniformly(raw):
    settings = ip.PipelineSettings(num_msa_clusters=10, max_extra_msa=12, num_recycle=49)
    out = ip.process_features(raw, settings, seed=1)
    target = ip.prepare_target(raw, use_templates=True)
    np.testing.assert_array_equal(
        out["true_msa"][:, 0], np.broadcast_to(target["msa"][0], out["true_msa"][:, 0].shape)
    )
    row_of = {tuple(r): i for i, r in enumerate(target["msa"])}
    counts = np.zeros(target["msa"].shape[0])
    for sample in out["true_msa"]:
        for row in sample[1:]:
            counts[row_of[tuple(row)]] += 1
    expected = settings.num_samples * 9 / (target["msa"].shape[0] - 1)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - expected) < 5 * np.sqrt(expected))
    assert out["extra_msa"].shape[1] == 12


def test_bert_masking_replaces_fifteen_percent_like_alphafold(raw):
    settings = ip.PipelineSettings(num_msa_clusters=64, num_recycle=19)
    out = ip.process_features(raw, settings, seed=2)
    ref = _reference_features(raw, 64, 5120, 0.15, seed=2) if _has_reference() else None
    fraction = out["bert_mask"].mean()
    assert abs(fraction - 0.15) < 0.01
    masked = out["bert_mask"] == 1
    mask_token = (out["msa_feat"][..., 22] == 1)[masked].mean()
    assert abs(mask_token - 0.7) < 0.03  # 70 % become the mask token
    np.testing.assert_array_equal(out["msa_feat"][..., :23].argmax(-1)[~masked], out["true_msa"][~masked])
    if ref is not None:
        ref_masked = ref["bert_mask"][:, : out["bert_mask"].shape[1]] == 1
        assert abs(ref["bert_mask"][:, : out["bert_mask"].shape[1]].mean() - fraction) < 0.02
        assert (
            abs(
                (ref["msa_feat"][..., 22] == 1)[:, : out["bert_mask"].shape[1]][ref_masked].mean()
                - mask_token
            )
            < 0.05
        )


def _has_reference() -> bool:
    try:
        import alphafold.model.features  # noqa: F401
    except ImportError:
        return False
    return True


def test_no_templates_give_empty_template_axes():
    sequence = "MKTAYIAKQR"
    raw = {
        **features.sequence_features(sequence, "q"),
        **features.msa_features([features.single_sequence_msa(sequence)]),
        **{
            name: np.array([], dtype=dtype)
            for name, dtype in features.templates.TEMPLATE_FEATURE_DTYPES.items()
        },
    }
    out = ip.process_features(raw, ip.PipelineSettings(), seed=0)
    assert out["template_aatype"].shape == (4, 0, 10)
    assert out["template_all_atom_positions"].shape == (4, 0, 10, 37, 3)
    assert out["msa_feat"].shape == (4, 1, 10, 49)
    padded = ip.process_features(raw, ip.PipelineSettings(pad_to_fixed_size=True), seed=0)
    assert padded["template_mask"].shape == (4, 4) and not padded["template_mask"].any()
