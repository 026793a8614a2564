"""The whole monomer model equals DeepMind's JAX AlphaFold at every recycle (fp32, random weights).

Both models get the same random official-format parameters (fan-in scaled, all 48 Evoformer
blocks) and the same processed features, made once by the reference's own
``np_example_to_features`` from real data: 40 residues of jackhmmer's HBB_HUMAN-vs-globins MSA
(46 rows) with a real globin structure (2gtl_A) as template. The reference runs
through our own fp32 recycle loop around ``modules.AlphaFold_noE`` (docs/reference.md), never
``RunModel.predict``. Outputs of both are computed once per session and cached in a tmp dir.

Tolerances are those of issue 3; the measured differences (2-core CPU) are written next to each
assertion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from af2cpu.errors import InputError
from af2cpu.model import kernels, primitives
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.options import Options
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import get_preset

reference = pytest.importorskip("reference", reason="needs the `reference` extra (jax, haiku, alphafold)")
pytestmark = pytest.mark.reference

NUM_RES, NUM_RECYCLE = 40, 3
PRESETS = ["model_1_ptm", "model_3_ptm"]  # with a template / without templates


def _model(preset_name: str, evoformer_blocks: int | None = None) -> AlphaFold:
    # The reference runs with zero_init=False (docs/reference.md), which switches on AlphaFold2's
    # placeholders for undefined template torsions; configure ours the same way.
    preset = dataclasses.replace(get_preset(preset_name).with_blocks(evoformer=evoformer_blocks),
                                 template_torsion_placeholders=True)
    return AlphaFold(preset)


def _features(preset_name: str) -> dict[str, np.ndarray]:
    raw = reference.real_raw_features(start=20, num_res=NUM_RES)
    return reference.make_processed_features(raw, preset_name, NUM_RECYCLE, seed=5, max_msa_clusters=32,
                                             max_extra_msa=64)


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, np.ndarray) or np.isscalar(v):
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """preset -> (our per-recycle outputs, the reference's), computed once and cached on disk."""
    cache = tmp_path_factory.mktemp("whole_model")
    out = {}
    for name in PRESETS:
        feats = _features(name)
        model = _model(name)
        flat = random_params(model, seed=1)
        load_params(model, flat)
        ours = model.eval().predict(feats, num_recycle=NUM_RECYCLE, return_recycles=True)["recycles"]
        ref = reference.run_alphafold(feats, flat, name, NUM_RECYCLE)
        for tag, runs_ in (("ours", ours), ("reference", ref)):
            for i, r in enumerate(runs_):
                np.savez(cache / f"{name}_{tag}_{i}.npz", **_flatten(r))
        out[name] = (
            [dict(np.load(cache / f"{name}_ours_{i}.npz")) for i in range(NUM_RECYCLE + 1)],
            [dict(np.load(cache / f"{name}_reference_{i}.npz")) for i in range(NUM_RECYCLE + 1)],
        )
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_final_atom_positions_match_reference_at_every_recycle(runs, preset):
    ours, ref = runs[preset]
    assert len(ours) == len(ref) == NUM_RECYCLE + 1
    for o, r in zip(ours, ref):
        mask = r["structure_module/final_atom_mask"][..., None]
        assert np.array_equal(o["structure_module/final_atom_mask"], r["structure_module/final_atom_mask"])
        diff = np.abs(o["structure_module/final_atom_positions"] - r["structure_module/final_atom_positions"]) * mask
        assert diff.max() < 1e-3  # Å, max over present atoms; measured <= 8.4e-5 (coordinates up to 52 Å)
    first, last = (r["structure_module/final_atom_positions"] for r in (ref[0], ref[-1]))
    assert np.abs(first - last).max() > 1.0  # recycling matters: the comparison is not vacuous


@pytest.mark.parametrize("preset", PRESETS)
def test_confidences_match_reference_at_every_recycle(runs, preset):
    ours, ref = runs[preset]
    for o, r in zip(ours, ref):
        assert np.abs(o["plddt"] - r["plddt"]).max() < 0.01  # measured <= 1.9e-5
        pae_diff = np.abs(o["predicted_aligned_error"] - r["predicted_aligned_error"]).max()
        assert pae_diff < 0.01  # Å; measured <= 5.1e-5
        assert abs(float(o["ptm"]) - float(r["ptm"])) < 1e-4  # measured <= 6.7e-8
    assert np.ptp(ref[-1]["plddt"]) > 1.0  # pLDDT varies over residues (measured 2.6): not vacuous


@pytest.mark.parametrize("preset", PRESETS)
def test_representations_match_reference_at_every_recycle(runs, preset):
    ours, ref = runs[preset]
    for o, r in zip(ours, ref):
        for name in ("single", "pair", "msa_first_row"):
            got, want = o[f"representations/{name}"], r[f"representations/{name}"]
            assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()  # measured <= 1.1e-6 relative
        for head in ("distogram/logits", "masked_msa/logits", "experimentally_resolved/logits"):
            assert np.abs(o[head] - r[head]).max() < 1e-3 * np.abs(r[head]).max()  # measured <= 1.2e-6 relative


@pytest.fixture(scope="module")
def small_model():
    """A 2-block model_1_ptm (templates, torsion rows, pTM) for properties that hold at any depth."""
    model = _model("model_1_ptm", evoformer_blocks=2)
    load_params(model, random_params(model, seed=2))
    return model.eval()


@pytest.fixture(scope="module")
def small_features():
    return _features("model_1_ptm")


def _pad_rows(feats, extra_msa=5, msa=3, templates=1):
    """Append fully masked MSA rows, extra-MSA rows and a template, as fixed-size padding does."""
    out = dict(feats)

    def pad(name, axis, n, value=0):
        a = out[name]
        shape = list(a.shape)
        shape[axis] = n
        out[name] = np.concatenate([a, np.full(shape, value, a.dtype)], axis=axis)

    for name in ("msa_feat", "msa_mask", "bert_mask", "true_msa", "msa_row_mask"):
        if name in out:
            pad(name, 1, msa)
    for name in ("extra_msa", "extra_msa_mask", "extra_has_deletion", "extra_deletion_value", "extra_msa_row_mask"):
        if name in out:
            pad(name, 1, extra_msa)
    for name in [k for k in out if k.startswith("template_")]:
        pad(name, 1, templates)
    return out


def test_padded_msa_extra_msa_and_template_rows_do_not_change_the_result(small_model, small_features):
    plain = small_model.predict(small_features, num_recycle=1)
    seen = {}
    evoformer = small_model.alphafold_iteration.evoformer

    def rows_seen(name):
        def hook(module, args):
            seen.setdefault(name, args[0].shape[0])
        return hook

    hooks = [stack[0].register_forward_pre_hook(rows_seen(name))
             for name, stack in (("msa", evoformer.evoformer_iteration), ("extra", evoformer.extra_msa_stack))]
    try:
        padded_features = _pad_rows(small_features)
        padded = small_model.predict(padded_features, num_recycle=1)
    finally:
        for hook in hooks:
            hook.remove()
    # The masked rows are not computed at all: the stacks see the unpadded rows (+1 torsion row per
    # real template), so the answer is the same computation, bit for bit (measured difference 0).
    real_templates = int(small_features["template_mask"][0].sum())
    assert seen == {"msa": small_features["msa_feat"].shape[1] + real_templates,
                    "extra": small_features["extra_msa"].shape[1] - _masked_rows(small_features["extra_msa_mask"])}
    assert np.array_equal(plain["structure_module"]["final_atom_positions"],
                          padded["structure_module"]["final_atom_positions"])
    for name in ("single", "pair", "msa_first_row"):
        assert np.array_equal(plain["representations"][name], padded["representations"][name])
    # Per-row outputs keep the padded shape; the real rows are unchanged.
    num_msa = small_features["msa_feat"].shape[1]
    assert padded["masked_msa"]["logits"].shape[0] == padded_features["msa_feat"].shape[1]
    assert np.array_equal(plain["masked_msa"]["logits"], padded["masked_msa"]["logits"][:num_msa])


def _masked_rows(mask: np.ndarray) -> int:
    """Rows of the first recycle slice that are masked out entirely (the reference pads to max sizes)."""
    return int((~mask[0].any(axis=1)).sum())


def test_chunked_model_equals_unchunked(small_model, small_features):
    plain = small_model.predict(small_features, num_recycle=1)
    small_model.set_options(Options.chunked(7))
    try:
        chunked = small_model.predict(small_features, num_recycle=1)
    finally:
        small_model.set_options(Options())
    for name in ("single", "pair"):
        want = plain["representations"][name]
        got = chunked["representations"][name]
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()  # measured <= 3.6e-7
    assert np.abs(plain["plddt"] - chunked["plddt"]).max() < 1e-3  # measured 3.8e-6


def _calls_and_runs(model, features, monkeypatch, owner, function: str, option: str, values: tuple[str, str]):
    """The small model's outputs with ``Options(option=value)`` for each of ``values``, and how many times the
    second ran ``owner.function`` (the first, never)."""
    calls = []
    original = getattr(owner, function)
    monkeypatch.setattr(owner, function, lambda *args: calls.append(1) or original(*args))
    outs = []
    try:
        for value in values:
            model.set_options(Options(**{option: value}))
            outs.append(model.predict(features, num_recycle=1))
            if not outs[1:]:
                assert not calls
    finally:
        model.set_options(Options())
    return (*outs, len(calls))


def _assert_float_noise(plain: dict, other: dict) -> None:
    """Two runs of the small model that differ in the order of sums only: equal to float noise."""
    for name in ("single", "pair", "msa_first_row"):
        want = plain["representations"][name]
        got = other["representations"][name]
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    atoms = (plain["structure_module"]["final_atom_positions"], other["structure_module"]["final_atom_positions"])
    assert np.abs(atoms[0] - atoms[1]).max() < 1e-3  # Å
    assert np.abs(plain["plddt"] - other["plddt"]).max() < 1e-3


def test_onednn_fp32_products_give_the_result_of_mkl_ones(small_model, small_features, monkeypatch):
    """runtime.fp32_products=onednn (auto's choice where MKL is slower: its AMD paths) changes the order of the
    sums only: the whole model as with PyTorch's MKL products, which the reference tests above compare."""
    plain, onednn, calls = _calls_and_runs(small_model, small_features, monkeypatch, primitives, "onednn_linear",
                                           "fp32_products", ("mkl", "onednn"))
    assert calls > 20  # the trunk's attentions, transitions and outer product means, at every recycle
    _assert_float_noise(plain, onednn)  # measured: representations <= 4.9e-7, atoms 7.6e-5 Å, pLDDT 3.8e-6


def test_af2cpus_attention_kernel_gives_the_result_of_pytorchs(small_model, small_features, monkeypatch):
    """runtime.attention=af2cpu (auto's choice where it was measured faster) changes the order of the sums only:
    the whole model as with PyTorch's attention kernel, which the reference tests above compare."""
    plain, ours, calls = _calls_and_runs(small_model, small_features, monkeypatch, kernels, "attention",
                                         "attention", ("pytorch", "af2cpu"))
    assert calls > 20  # the trunk's attentions, at every recycle
    _assert_float_noise(plain, ours)


def test_af2cpus_elementwise_kernels_give_the_result_of_pytorchs(small_model, small_features, monkeypatch):
    """runtime.elementwise=af2cpu (auto's choice where it was measured faster: the layer norms and the gates; fp32
    sums stay PyTorch's) changes the order of the sums only."""
    plain, ours, calls = _calls_and_runs(small_model, small_features, monkeypatch, kernels, "layer_norm",
                                         "elementwise", ("pytorch", "af2cpu"))
    assert calls > 50  # the trunk's layer norms, at every recycle
    _assert_float_noise(plain, ours)


def test_early_stop_ends_recycling_when_ca_distances_settle(small_model, small_features):
    out = small_model.predict(small_features, num_recycle=3, early_stop_tolerance=1e6, return_recycles=True)
    assert int(out["num_recycles"]) == 1 and len(out["recycles"]) == 2
    assert out["structure_module"]["final_atom_positions"].shape == (NUM_RES, 37, 3)
    assert set(out["representations"]) >= {"single", "pair", "msa_first_row"}


def test_bad_features_name_the_key_and_shape(small_model, small_features):
    missing = {k: v for k, v in small_features.items() if k != "msa_feat"}
    with pytest.raises(InputError, match="msa_feat"):
        small_model.predict(missing)
    wrong = dict(small_features, msa_mask=small_features["msa_mask"][:, :, :-1])
    with pytest.raises(InputError, match=rf"msa_mask has shape \(4, \d+, {NUM_RES - 1}\).*aatype says {NUM_RES}"):
        small_model.predict(wrong)
    with pytest.raises(InputError, match="recycle slices"):
        small_model.predict({k: v[:2] for k, v in small_features.items()}, num_recycle=3)


def test_features_without_recycle_axis_are_one_pass(small_model, small_features):
    single = small_model.predict({k: v[0] for k, v in small_features.items()}, num_recycle=0)
    sliced = small_model.predict({k: v[:1] for k, v in small_features.items()}, num_recycle=0)
    assert np.array_equal(single["structure_module"]["final_atom_positions"],
                          sliced["structure_module"]["final_atom_positions"])
