"""AlphaFold-Multimer v3 presets and parameter files: the official layout, both ways, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from test_params import _skeleton
from test_params import _tree as params_tree

from af2cpu.cli import params as params_cli
from af2cpu.errors import InputError
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.params import export_params, official_shapes, random_params, read_params, write_npz
from af2cpu.model.presets import PRESETS
from af2cpu.model.weights import check_params_file

TREE = Path(__file__).parent / "data" / "model" / "params_model_1_multimer_v3.tree.tsv"
MULTIMER = [f"model_{i}_multimer_v3" for i in range(1, 6)]
# Loading and export on a few blocks of the same layout (the stacked tensors keep their keys).
SMALL = PRESETS["model_2_multimer_v3"].with_blocks(evoformer=2, extra_msa=1)


def _tree():
    return params_tree(TREE)


@pytest.fixture(scope="module")
def skeleton():
    return _skeleton("model_2_multimer_v3")


def test_every_multimer_preset_holds_exactly_the_official_tensors(skeleton):
    tree = _tree()
    assert len(tree) == 330
    ours = {k: shape for k, (shape, _) in official_shapes(skeleton).items()}
    assert ours == tree
    # The five v3 files share one layout: the presets share one architecture.
    assert len({PRESETS[n].architecture for n in MULTIMER}) == 1


def test_multimer_presets_carry_deepminds_settings():
    presets = [PRESETS[n] for n in MULTIMER]
    assert all(p.multimer and p.use_templates and p.predicted_aligned_error for p in presets)
    assert [p.max_extra_msa for p in presets] == [2048, 2048, 2048, 1152, 1152]
    assert {p.num_msa_clusters for p in presets} == {508}  # num_msa: 512 rows with the 4 template rows
    assert {(p.num_recycle, p.recycle_early_stop_tolerance, p.masked_msa_replace_fraction) for p in presets} == \
        {(20, 0.5, 0.15)}
    a = presets[0].architecture
    assert (a.evoformer.num_block, a.extra_msa.num_block, a.target_feat_dim, a.max_relative_chain) == (48, 4, 21, 2)
    assert a.evoformer.outer_product_mean_first and a.evoformer.fuse_projection_weights
    assert a.template.multimer and a.structure_module.position_scale == 20.0
    assert a.heads.masked_msa_num_output == 22


@pytest.fixture(scope="module")
def multimer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "params_model_2_multimer_v3.npz"
    flat = random_params(_skeleton(SMALL), seed=5)
    write_npz(path, flat)
    return path, flat


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def loaded(multimer_file, cache_dir):
    """Loaded from the .npz, writing the safetensors cache."""
    return AlphaFold.from_params(multimer_file[0], preset=SMALL, cache_dir=cache_dir)


def test_load_export_round_trip_and_safetensors_cache(multimer_file, loaded, cache_dir):
    path, flat = multimer_file
    assert loaded.preset.name == "model_2_multimer_v3"
    exported = export_params(loaded)
    assert exported.keys() == flat.keys()
    assert all(np.array_equal(exported[k], flat[k]) for k in flat)
    (cached,) = cache_dir.glob("*.safetensors")
    cached_flat = read_params(cached)
    assert cached_flat.keys() == flat.keys()
    assert all(np.array_equal(cached_flat[k], flat[k]) for k in flat)
    check_params_file(path, "model_2_multimer_v3")  # the pre-flight check accepts it


def test_fused_projections_hold_left_then_right(multimer_file, loaded):
    _, flat = multimer_file
    model = loaded
    key = "alphafold/alphafold_iteration/evoformer/evoformer_iteration/triangle_multiplication_outgoing/projection//weights"
    layer = model.alphafold_iteration.evoformer.evoformer_iteration[1].triangle_multiplication_outgoing
    assert torch.equal(layer.projection.weights, torch.from_numpy(flat[key][1]))
    assert layer.projection.weights.shape == (128, 256)


def test_monomer_file_for_multimer_preset_and_the_reverse_are_clear_errors(multimer_file, tmp_path):
    path, _ = multimer_file
    with pytest.raises(InputError, match=r"params_model_2_multimer_v3.npz holds an AlphaFold-Multimer .* model_1_ptm"):
        AlphaFold.from_params(path, preset=PRESETS["model_1_ptm"].with_blocks(evoformer=1, extra_msa=1))
    monomer = tmp_path / "params_model_3_ptm.npz"
    monomer_skeleton = _skeleton(PRESETS["model_3_ptm"].with_blocks(evoformer=1, extra_msa=1))
    write_npz(monomer, random_params(monomer_skeleton, seed=1))
    with pytest.raises(InputError, match=r"params_model_3_ptm.npz holds a monomer AlphaFold2 .* model_1_multimer_v3"):
        AlphaFold.from_params(monomer, preset=PRESETS["model_1_multimer_v3"].with_blocks(evoformer=1))
    with pytest.raises(InputError, match="holds a monomer model's parameters, not those of model_1_multimer_v3"):
        check_params_file(monomer, "model_1_multimer_v3")
    with pytest.raises(InputError, match="holds an AlphaFold-Multimer model's parameters, not those of model_1_ptm"):
        check_params_file(path, "model_1_ptm")


def test_params_random_cli_writes_a_multimer_file(tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    params_cli.add_arguments(parser)
    out = tmp_path / "params_model_1_multimer_v3.npz"
    # One Evoformer block: the same 330 keys, a 24th of the bytes to write.
    monkeypatch.setitem(PRESETS, "model_1_multimer_v3", PRESETS["model_1_multimer_v3"].with_blocks(evoformer=1))
    assert params_cli.run(parser.parse_args(["random", "--preset", "model_1_multimer_v3", str(out)])) == 0
    assert "330 tensors" in capsys.readouterr().out
    written = {k: v.shape for k, v in read_params(out).items()}
    assert written.keys() == _tree().keys()
    assert written == {k: (1, *shape[1:]) if "/evoformer_iteration/" in k else shape for k, shape in _tree().items()}
