"""AlphaFold-Multimer presets (v3, and v2 and v1 with unfused triangle multiplications) and parameter
files: the official layout, both ways, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_params import _skeleton
from test_params import _tree as params_tree

from af2cpu.cli import params as params_cli
from af2cpu.config import compose_config
from af2cpu.errors import InputError
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.params import (
    export_params,
    official_shapes,
    preset_from_filename,
    random_params,
    read_params,
    write_npz,
)
from af2cpu.model.presets import PRESETS, get_preset
from af2cpu.model.weights import check_params, check_params_file, model_runs, recycling

TREE = Path(__file__).parent / "data" / "model" / "params_model_1_multimer_v3.tree.tsv"
MONOMER_TREE = Path(__file__).parent / "data" / "model" / "params_model_1_ptm.tree.tsv"
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


def _random_file(tmp_path_factory, preset, seed: int):
    """(``params_<preset>.npz`` of random official-format weights, its flat params)."""
    path = tmp_path_factory.mktemp("params") / f"params_{preset.name}.npz"
    flat = random_params(_skeleton(preset), seed=seed)
    write_npz(path, flat)
    return path, flat


@pytest.fixture(scope="module")
def multimer_file(tmp_path_factory):
    return _random_file(tmp_path_factory, SMALL, seed=5)


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


# ---------------------------------------------------------------- v2 and v1 (AlphaFold 2.2 and 2.1)

OLDER = [f"model_{i}_multimer{v}" for v in ("_v2", "") for i in range(1, 6)]
SMALL_V2 = PRESETS["model_2_multimer_v2"].with_blocks(evoformer=2, extra_msa=1)
# The triangle multiplications of each stack: the multimer's scope -> the monomer file's scope of the
# same stack (the template pair stack is named differently in the two files).
_STACK = "alphafold/alphafold_iteration/evoformer/"
_TRIANGLE_STACKS = {
    _STACK + "evoformer_iteration/": _STACK + "evoformer_iteration/",
    _STACK + "extra_msa_stack/": _STACK + "extra_msa_stack/",
    _STACK + "template_embedding/single_template_embedding/template_embedding_iteration/":
        _STACK + "template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state/",
}


def _unfused_tree() -> dict[str, tuple[int, ...]]:
    """The v1/v2 files' tensors: v3's, with each stack's triangle multiplications as the monomer file holds
    them (left/right projection and gate, layer_norm_input, center_layer_norm: DeepMind's unfused layout)."""
    v3, monomer = _tree(), params_tree(MONOMER_TREE)
    tree = {k: v for k, v in v3.items() if "/triangle_multiplication_" not in k}
    for multimer_scope, monomer_scope in _TRIANGLE_STACKS.items():
        depth = next(v3[k][0] for k in v3 if k.startswith(multimer_scope))
        for key, shape in monomer.items():
            if key.startswith(monomer_scope + "triangle_multiplication_"):
                tree[multimer_scope + key[len(monomer_scope):]] = (depth, *shape[1:])
    return tree


def test_v1_and_v2_presets_are_v3_unfused_with_deepminds_common_updates():
    assert get_preset("model_1_multimer_v2").name == "model_1_multimer_v2"
    assert get_preset("model_3_multimer").name == "model_3_multimer"
    v3 = PRESETS["model_1_multimer_v3"]
    for name in OLDER:
        p = PRESETS[name]
        # DeepMind's config.py common_updates: num_msa 252, num_extra_msa 1152, 3 recycles, no early stop.
        assert (p.num_msa_clusters, p.max_extra_msa, p.num_recycle, p.recycle_early_stop_tolerance) == (252, 1152, 3, 0.0)
        assert p.masked_msa_replace_fraction == 0.15 and p.multimer and p.predicted_aligned_error
        a = p.architecture
        assert not (a.evoformer.fuse_projection_weights or a.extra_msa.fuse_projection_weights
                    or a.template.fuse_projection_weights)
        # Nothing else differs from v3's architecture.
        assert dataclasses.replace(
            a, evoformer=v3.architecture.evoformer, extra_msa=v3.architecture.extra_msa,
            template=v3.architecture.template) == v3.architecture
    assert PRESETS["model_4_multimer_v2"].params_release.startswith("alphafold_params_2022-03-02.tar")
    assert PRESETS["model_4_multimer"].params_release.startswith("alphafold_params_2021-10-27.tar")
    assert v3.params_release is None


def test_file_names_map_to_their_version():
    assert preset_from_filename("params_model_1_multimer_v2.npz") == "model_1_multimer_v2"
    assert preset_from_filename("/p/params_model_3_multimer.npz") == "model_3_multimer"
    assert preset_from_filename("params_model_5_multimer_v3.safetensors") == "model_5_multimer_v3"


def test_v2_preset_holds_exactly_the_unfused_official_tensors():
    tree = _unfused_tree()
    assert len(tree) == 330 + 6 * 4  # six triangle multiplications, each 12 tensors instead of 8
    ours = {k: shape for k, (shape, _) in official_shapes(_skeleton("model_1_multimer_v2")).items()}
    assert ours == tree
    assert {PRESETS[n].architecture for n in OLDER} == {PRESETS["model_1_multimer_v2"].architecture}


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory):
    return _random_file(tmp_path_factory, SMALL_V2, seed=6)


def test_unfused_file_loads_into_the_v2_model_every_tensor_used(v2_file):
    path, flat = v2_file
    model = AlphaFold.from_params(path, preset=SMALL_V2)  # load_params: every key used, every shape checked
    assert model.preset.name == "model_2_multimer_v2"
    exported = export_params(model)
    assert exported.keys() == flat.keys() and all(np.array_equal(exported[k], flat[k]) for k in flat)
    key = ("alphafold/alphafold_iteration/evoformer/template_embedding/single_template_embedding/"
           "template_embedding_iteration/triangle_multiplication_incoming/right_gate//weights")
    layer = (model.alphafold_iteration.evoformer.template_embedding.single_template_embedding
             .template_embedding_iteration[1].triangle_multiplication_incoming)
    assert torch.equal(layer.right_gate.weights, torch.from_numpy(flat[key][1])) and flat[key].shape == (2, 64, 64)
    check_params_file(path, "model_2_multimer_v2")  # the pre-flight check accepts it


def test_fused_file_for_a_v2_preset_and_the_reverse_are_clear_errors(multimer_file, v2_file):
    v3_path, v2_path = multimer_file[0], v2_file[0]
    fused = (rf"parameter file {v3_path} holds fused triangle-multiplication weights \(the layout of "
             r"model_1..5_multimer_v3\), but preset model_2_multimer_v2 reads unfused ones")
    with pytest.raises(InputError, match=fused + r".*its own file \(params_model_2_multimer_v2.npz\)$"):
        AlphaFold.from_params(v3_path, preset=SMALL_V2)
    with pytest.raises(InputError, match=fused):
        check_params_file(v3_path, "model_2_multimer_v2")
    with pytest.raises(InputError, match=rf"{v2_path} holds unfused triangle-multiplication weights \(the layout "
                                         r"of model_1..5_multimer_v2, model_1..5_multimer\), but preset "
                                         r"model_2_multimer_v3 reads fused ones"):
        AlphaFold.from_params(v2_path, preset=SMALL)


def test_older_multimer_presets_are_accepted_and_a_missing_file_says_where_it_comes_from(tmp_path):
    cfg = compose_config([f"params_dir={tmp_path}", "model.multimer_names=[model_1_multimer_v2,model_3_multimer]",
                          "model.num_predictions_per_model=1"])
    assert [r.name for r in model_runs(cfg, True)] == ["model_1_multimer_v2_pred_0", "model_3_multimer_pred_0"]
    assert recycling(cfg, "model_1_multimer_v2") == (3, 0.0)  # AlphaFold 2.2's schedule
    with pytest.raises(InputError) as info:
        check_params(cfg, [True])
    message = str(info.value)
    assert (f"params_model_1_multimer_v2.npz (model_1_multimer_v2) is not in that download but in DeepMind's "
            f"alphafold_params_2022-03-02.tar (AlphaFold 2.2): put it at {tmp_path / 'params_model_1_multimer_v2.npz'}"
            in message)
    assert f"alphafold_params_2021-10-27.tar (AlphaFold 2.1): put it at {tmp_path / 'params_model_3_multimer.npz'}" \
        in message
