"""The trunk's modules equal their counterparts in DeepMind's JAX AlphaFold (fp32, random weights).

Each test fills one of our modules and the matching haiku module with the same random
official-format parameters, feeds both the same random activations (with some masked rows and
columns) and compares. Tolerances are relative to the output's largest magnitude; the measured
differences (2-core CPU, fp32) are written next to each assertion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from af2cpu.model import evoformer as evo
from af2cpu.model import kernels, primitives
from af2cpu.model import options as model_options
from af2cpu.model.options import ChunkSizes, Options
from af2cpu.model.params import export_params, load_params, random_params
from af2cpu.model.presets import Architecture

reference = pytest.importorskip("reference", reason="needs the `reference` extra (jax, haiku, alphafold)")
from alphafold.model import modules as af_modules

pytestmark = pytest.mark.reference
RTOL = 1e-5  # measured: max |ours - reference| / max |reference| <= 1.4e-6 for every module below
CFG = reference.reference_config("model_1_ptm").model
EVO, GC = CFG.embeddings_and_evoformer, CFG.global_config
A = Architecture()  # DeepMind's sizes, those of CFG
STACK = A.evoformer


def _fill(module, root, seed=0):
    flat = random_params(module, seed=seed, root=root)
    load_params(module, flat, root=root)
    return flat


def _acts(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _mask(seed, shape, frac=0.2):
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) > frac).astype(np.float32)
    mask[-1] = 0.0  # a fully masked row, as padding makes
    return mask


# Key masks that take each path of Attention.self_attention: scattered masked entries, runs of
# all-valid rows between rows with masked keys (pair bias read through a broadcast view for
# the former, materialised per run for the latter), and no mask at all.
MASK_KINDS = ("scattered", "runs", "all_valid")


def _mask_kind(kind, seed, shape):
    if kind == "scattered":
        return _mask(seed, shape)
    mask = np.ones(shape, np.float32)
    if kind == "runs":
        mask[2, 3] = mask[3, 0] = 0.0  # rows 2-3 have masked keys, rows 0-1 and 4.. do not
        mask[-1] = 0.0
    return mask


def _torch(*arrays):
    return [torch.from_numpy(a) for a in arrays]


def _rel_err(ours, ref):
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else ours
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("chunk", (None, 2))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_msa_row_attention_with_pair_bias_matches_reference(mask_kind, chunk):
    ours = evo.MSARowAttentionWithPairBias(A.msa_channel, A.pair_channel, STACK.msa_num_head)
    ours.options = Options.chunked(chunk) if chunk else Options()
    flat = _fill(ours, "msa_row_attention_with_pair_bias")
    msa, pair = _acts(1, (6, 12, 256), (12, 12, 128))
    mask = _mask_kind(mask_kind, 2, (6, 12))
    ref = reference.apply(lambda m, k, p: af_modules.MSARowAttentionWithPairBias(
        EVO.evoformer.msa_row_attention_with_pair_bias, GC)(m, k, p, is_training=False), flat, msa, mask, pair)
    with torch.no_grad():
        got = ours(*_torch(msa, mask, pair))
    assert _rel_err(got, ref) < RTOL  # measured 7.2e-7


@pytest.mark.parametrize("chunk", (None, 5))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_msa_column_attention_matches_reference(mask_kind, chunk):
    ours = evo.MSAColumnAttention(A.msa_channel, STACK.msa_num_head)
    ours.options = Options.chunked(chunk) if chunk else Options()
    flat = _fill(ours, "msa_column_attention")
    (msa,) = _acts(3, (6, 12, 256))
    mask = _mask_kind(mask_kind, 4, (6, 12))
    ref = reference.apply(lambda m, k: af_modules.MSAColumnAttention(
        EVO.evoformer.msa_column_attention, GC)(m, k, is_training=False), flat, msa, mask)
    with torch.no_grad():
        got = ours(*_torch(msa, mask))
    assert _rel_err(got, ref) < RTOL  # measured 6.3e-7


@pytest.mark.parametrize("chunk", (None, 5))
def test_msa_column_global_attention_matches_reference(chunk):
    # chunk 5: blocks of 5 columns (the last one of 2), each added into an update of the whole MSA.
    ours = evo.MSAColumnGlobalAttention(A.extra_msa.msa_channel, A.extra_msa.msa_num_head)
    ours.options = Options.chunked(chunk) if chunk else Options()
    flat = _fill(ours, "msa_column_global_attention")
    (msa,) = _acts(5, (7, 12, 64))
    mask = _mask(6, (7, 12))
    ref = reference.apply(lambda m, k: af_modules.MSAColumnGlobalAttention(
        EVO.evoformer.msa_column_attention, GC)(m, k, is_training=False), flat, msa, mask)
    with torch.no_grad():
        got = ours(*_torch(msa, mask))
    assert _rel_err(got, ref) < RTOL  # measured 4.6e-7 (4.0e-7 on AVX512/AMX, whole and in blocks)


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("kind,cls", [("triangle_attention_starting_node", evo.TriangleAttentionStartingNode),
                                      ("triangle_attention_ending_node", evo.TriangleAttentionEndingNode)])
def test_triangle_attention_matches_reference(kind, cls, mask_kind):
    ours = cls(A.pair_channel, STACK.triangle_num_head)
    flat = _fill(ours, kind)
    (pair,) = _acts(7, (12, 12, 128))
    mask = _mask_kind(mask_kind, 8, (12, 12))
    ref = reference.apply(lambda p, k: af_modules.TriangleAttention(
        EVO.evoformer[kind], GC, name=kind)(p, k, is_training=False), flat, pair, mask)
    with torch.no_grad():
        got = ours(*_torch(pair, mask))
    assert _rel_err(got, ref) < RTOL  # measured 4.8e-7 (starting), 4.1e-7 (ending)


@pytest.mark.parametrize("mask_kind", ("scattered", "all_valid"))
@pytest.mark.parametrize("kind,cls", [("triangle_multiplication_outgoing", evo.TriangleMultiplicationOutgoing),
                                      ("triangle_multiplication_incoming", evo.TriangleMultiplicationIncoming)])
def test_triangle_multiplication_matches_reference(kind, cls, mask_kind):
    ours = cls(A.pair_channel, STACK.num_intermediate_channel)
    flat = _fill(ours, kind)
    (pair,) = _acts(9, (12, 12, 128))
    mask = _mask_kind(mask_kind, 10, (12, 12))
    ref = reference.apply(lambda p, k: af_modules.TriangleMultiplication(
        EVO.evoformer[kind], GC, name=kind)(p, k, is_training=False), flat, pair, mask)
    with torch.no_grad():
        got = ours(*_torch(pair, mask))
    assert _rel_err(got, ref) < RTOL  # measured 5.0e-7 (outgoing), 4.3e-7 (incoming)


# 6 rows take the order with the output weights folded in first, 48 the outer products first; with
# oneDNN's products (runtime.fp32_products), the outer products' GEMMs go there too.
@pytest.mark.parametrize("rows,products", [(6, "mkl"), (48, "mkl"), (48, "onednn")])
def test_outer_product_mean_matches_reference(rows, products, monkeypatch):
    ours = evo.OuterProductMean(A.msa_channel, A.pair_channel, STACK.num_outer_channel)
    for module in ours.modules():
        if hasattr(module, "options"):
            module.options = Options(fp32_products=products)
    shapes = []
    onednn_linear = primitives.onednn_linear
    monkeypatch.setattr(primitives, "onednn_linear", lambda x, w, *args: shapes.append(w.shape) or onednn_linear(x, w, *args))
    flat = _fill(ours, "outer_product_mean")
    (msa,) = _acts(11, (rows, 12, 256))
    mask = _mask(12, (rows, 12))
    ref = reference.apply(lambda m, k: af_modules.OuterProductMean(
        EVO.evoformer.outer_product_mean, GC, 128)(m, k, is_training=False), flat, msa, mask)
    with torch.no_grad():
        got = ours(*_torch(msa, mask))
    assert _rel_err(got, ref) < RTOL  # measured 1.1e-6 (6 rows), 7.1e-7 (48 rows, either library)
    # the projections and the outer products (S, L*c) through oneDNN, or nothing (the output layer writes
    # into the whole output here: PyTorch's)
    assert shapes == ([] if products == "mkl" else [(256, 64), (48, 12 * 32)])


@pytest.mark.parametrize("kind,channels,factor",
                         [("msa_transition", A.msa_channel, STACK.msa_transition_factor),
                          ("pair_transition", A.pair_channel, STACK.pair_transition_factor)])
def test_transition_matches_reference(kind, channels, factor):
    ours = evo.Transition(channels, factor)
    flat = _fill(ours, kind)
    (act,) = _acts(13, (6, 12, channels))
    mask = _mask(14, (6, 12))
    ref = reference.apply(lambda a, k: af_modules.Transition(EVO.evoformer[kind], GC, name=kind)(
        a, k, is_training=False), flat, act, mask)
    with torch.no_grad():
        got = ours(*_torch(act, mask))
    assert _rel_err(got, ref) < RTOL  # measured 4.8e-7


@pytest.mark.parametrize("products", ["mkl", "onednn"])
@pytest.mark.parametrize("is_extra_msa", [False, True])
def test_evoformer_block_matches_reference(is_extra_msa, products, monkeypatch):
    """In both libraries of the fp32 products (runtime.fp32_products: oneDNN where this CPU runs it faster)."""
    stack = A.extra_msa if is_extra_msa else A.evoformer
    c_m = stack.msa_channel
    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
    ours = evo.EvoformerIteration(stack, A.pair_channel)
    for module in ours.modules():
        if hasattr(module, "options"):
            module.options = Options(fp32_products=products)
    calls = []
    onednn_linear = primitives.onednn_linear
    monkeypatch.setattr(primitives, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    flat = _fill(ours, name)
    msa, pair = _acts(15, (9, 16, c_m), (16, 16, 128))
    msa_mask = _mask(16, (9, 16))
    pair_mask = np.ones((16, 16), np.float32)
    pair_mask[-2:, :] = pair_mask[:, -2:] = 0.0

    def fn(m, p, mm, pm):
        block = af_modules.EvoformerIteration(EVO.evoformer, GC, is_extra_msa=is_extra_msa, name=name)
        return block({"msa": m, "pair": p}, {"msa": mm, "pair": pm}, is_training=False)

    ref = reference.apply(fn, flat, msa, pair, msa_mask, pair_mask)
    with torch.no_grad():
        got_msa, got_pair = ours(*_torch(msa, pair, msa_mask, pair_mask))
    assert _rel_err(got_msa, ref["msa"]) < RTOL  # measured 1.5e-7 (Evoformer), 9.9e-8 (extra MSA)
    assert _rel_err(got_pair, ref["pair"]) < RTOL  # measured 1.7e-7 (Evoformer), 1.6e-7 (extra MSA)
    # oneDNN ran the attentions', transitions' and outer product mean's products, or none of them
    assert (len(calls) >= 8) == (products == "onednn") and (products == "onednn" or not calls)


@pytest.mark.parametrize("options", [Options.chunked(4), Options(block_bytes=1)], ids=["chunks", "one_row_blocks"])
@pytest.mark.parametrize("num_seq", [9, 17], ids=["fewer_rows_than_columns", "more_rows_than_columns"])
def test_evoformer_block_chunked_equals_unchunked(options, num_seq):
    # Memory chunks, and cache blocks down to one row per step, change nothing but summation order.
    # Unblocked column attention (as compiled blocks run it) with more MSA rows than residues once
    # indexed its output along the wrong axis and stopped with a shape error.
    block = evo.EvoformerIteration(STACK, A.pair_channel)
    _fill(block, "evoformer_iteration", seed=3)
    msa, pair = _torch(*_acts(17, (num_seq, 13, 256), (13, 13, 128)))
    msa_mask, pair_mask = _torch(_mask(18, (num_seq, 13)), np.ones((13, 13), np.float32))

    def run(opts):
        for m in block.modules():
            if hasattr(m, "options"):
                m.options = opts
        with torch.no_grad():
            return block(msa, pair, msa_mask, pair_mask)

    full = run(Options(block_bytes=None))
    for a, b in zip(full, run(options)):
        assert float((a - b).abs().max() / a.abs().max()) < 1e-6  # measured 1.1e-7 (summation order)


@pytest.mark.parametrize("options", [
    Options(block_bytes=1), Options(chunks=ChunkSizes(triangle_multiplication=4)), Options.chunked(4),
    Options(chunks=ChunkSizes(triangle_channels=5), block_bytes=1),
    # The projections through oneDNN (runtime.fp32_products): whole, and a slab of 32 channels (128 rows) at a time
    Options(block_bytes=None, fp32_products="onednn"), Options(chunks=ChunkSizes(triangle_channels=32),
                                                               fp32_products="onednn"),
    # The masked gates in one pass (runtime.elementwise): whole, and in slabs of channels and one-row steps
    Options(block_bytes=None, elementwise="af2cpu"),
    Options(chunks=ChunkSizes(triangle_channels=5), block_bytes=1, elementwise="af2cpu")],
    ids=["one_row_steps", "row_chunks", "chunks", "channel_slabs_one_row_steps", "onednn", "channel_slabs_onednn",
         "elementwise", "channel_slabs_elementwise"])
@pytest.mark.parametrize("kind", ["triangle_multiplication_outgoing", "triangle_multiplication_incoming"])
def test_triangle_sums_in_product_blocks_equal_whole(monkeypatch, options, kind):
    # The triangle sums take TRIANGLE_PRODUCT_ROWS rows a GEMM (5 here: blocks 0-5, 5-10, 10-13), the
    # layer norm and projections smaller steps inside each block, or the memory chunk bounds both.
    # With triangle_channels the projections and sums go a slab of channels at a time (5, 5, ..., 3
    # of 128), the input layer norm recomputed for each block of rows.
    if options.elementwise.value == "af2cpu" and kernels.load() is None:
        pytest.skip("af2cpu's kernels need AVX2 and a C++ compiler")
    monkeypatch.setattr(model_options, "TRIANGLE_PRODUCT_ROWS", 5)
    cls = evo.TriangleMultiplicationOutgoing if kind.endswith("outgoing") else evo.TriangleMultiplicationIncoming
    module = cls(A.pair_channel, STACK.num_intermediate_channel)
    _fill(module, kind, seed=5)
    (pair,) = _torch(*_acts(19, (13, 13, 128)))
    pair_mask = torch.as_tensor(_mask(20, (13, 13)))
    calls = []
    onednn_linear = primitives.onednn_linear
    monkeypatch.setattr(primitives, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    gates = []
    gated = kernels.gated
    monkeypatch.setattr(kernels, "gated", lambda *args: gates.append(1) or gated(*args))
    with torch.no_grad():
        module.options = Options(block_bytes=None)
        whole = module(pair, pair_mask)
        module.options = options
        blocked = module(pair, pair_mask)
    assert float((whole - blocked).abs().max() / whole.abs().max()) < 1e-6  # measured <= 2.5e-7 (summation order)
    assert bool(calls) == (options.fp32_products.value == "onednn")
    assert bool(gates) == (options.elementwise.value == "af2cpu")


def test_export_after_load_gives_back_the_same_arrays():
    block = evo.EvoformerIteration(STACK, A.pair_channel)
    flat = _fill(block, "evoformer_iteration", seed=4)
    again = export_params(block, root="evoformer_iteration")
    assert flat.keys() == again.keys()
    assert all(np.array_equal(flat[k], again[k]) for k in flat)


def test_template_pair_stack_matches_reference():
    from af2cpu.model.template import TemplatePairStack

    ours = TemplatePairStack(A.template)
    flat = _fill(ours, "template_pair_stack", seed=5)
    (pair,) = _acts(19, (14, 14, 64))
    mask = np.ones((14, 14), np.float32)
    mask[-2:, :] = mask[:, -2:] = 0.0
    ref = reference.apply(lambda p, k: af_modules.TemplatePairStack(EVO.template.template_pair_stack, GC)(
        p, k, is_training=False), flat, pair, mask)
    with torch.no_grad():
        got = ours(*_torch(pair, mask))
    assert _rel_err(got, ref) < RTOL  # measured 2.2e-7


@pytest.fixture(scope="module")
def processed():
    """One pass of processed model_1_ptm features (1 real template, 3 padded) from the reference."""
    raw = reference.real_raw_features(start=0, num_res=20)
    feats = reference.make_processed_features(raw, "model_1_ptm", num_recycle=0, max_msa_clusters=12,
                                              max_extra_msa=16)
    return {k: v[0] for k, v in feats.items()}


def test_template_embedding_matches_reference(processed):
    from af2cpu.model.template import TemplateEmbedding

    ours = TemplateEmbedding(A.template, A.pair_channel)
    flat = _fill(ours, "template_embedding", seed=6)
    templ = {k: v for k, v in processed.items() if k.startswith("template_")}
    (pair,) = _acts(20, (20, 20, 128))
    mask_2d = np.ones((20, 20), np.float32)
    ref = reference.apply(lambda p, t, m: af_modules.TemplateEmbedding(EVO.template, GC)(
        p, t, m, is_training=False), flat, pair, templ, mask_2d)
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in templ.items()}
    with torch.no_grad():
        got = ours(torch.from_numpy(pair), batch, torch.from_numpy(mask_2d))
        # Chunks of residue pairs (400 = 6 * 64 + 16), each written into the output.
        ours.options = Options(chunks=ChunkSizes(template_attention=64))
        chunked = ours(torch.from_numpy(pair), batch, torch.from_numpy(mask_2d))
    assert _rel_err(got, ref) < RTOL  # measured 5.8e-7
    assert _rel_err(chunked, ref) < RTOL


def test_embeddings_and_evoformer_match_reference(processed):
    """Input, relative-position, recycling (from a non-zero previous pass), template (pair and
    torsion rows) and extra-MSA embeddings, through 2 Evoformer blocks.

    Configured as docs/reference.md says (zero_init=False, hence torsion placeholders). With DeepMind's
    inference setting (zero_init=True) the pre-omega torsion of a residue without a resolved
    predecessor is the direction of a rounding-noise vector (its frame is degenerate): the
    reference itself gives different values eager and under jit, so that setting cannot be
    compared value by value."""
    zero_init = False
    import dataclasses

    from af2cpu.model.alphafold import EmbeddingsAndEvoformer
    from af2cpu.model.presets import get_preset

    preset = dataclasses.replace(get_preset("model_1_ptm").with_blocks(evoformer=2),
                                 template_torsion_placeholders=not zero_init)
    ours = EmbeddingsAndEvoformer(preset)
    flat = _fill(ours, "evoformer", seed=7)
    cfg = reference.reference_config("model_1_ptm").model
    cfg.global_config.zero_init = zero_init
    cfg.embeddings_and_evoformer.evoformer_num_block = 2
    rng = np.random.default_rng(21)
    prev = {"prev_pos": (10 * rng.standard_normal((20, 37, 3))).astype(np.float32),
            "prev_msa_first_row": rng.standard_normal((20, 256)).astype(np.float32),
            "prev_pair": rng.standard_normal((20, 20, 128)).astype(np.float32)}
    batch = {**processed, **prev}
    ref = reference.apply(lambda b: af_modules.EmbeddingsAndEvoformer(
        cfg.embeddings_and_evoformer, cfg.global_config)(b, is_training=False), flat, batch)
    ints = {"aatype", "residue_index", "extra_msa", "template_aatype"}
    tbatch = {k: torch.from_numpy(np.asarray(v, np.int64 if k in ints else np.float32))
              for k, v in processed.items() if np.asarray(v).dtype != object}
    with torch.no_grad():
        got = ours(tbatch, {k: torch.from_numpy(v) for k, v in prev.items()})
    for name in ("single", "pair", "msa", "msa_first_row"):
        assert _rel_err(got[name], ref[name]) < RTOL  # measured <= 5.1e-7
