"""The trunk's in-place residual updates and the heads' row blocks give the same numbers.

Eager stacks add each module's update into the pair and MSA they own (EvoformerIteration with
``inplace``), the triangle multiplication a block of rows at a time; the heads and the structure
module read the trunk's pair (its own dtype) a block of rows at a time; compact outputs compute
PAE and pTM from blocks of PAE logits. Each is compared with the formulation it replaces.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from af2cpu.model import confidence, evoformer, heads, structure_module
from af2cpu.model import options as model_options
from af2cpu.model.evoformer import EvoformerIteration, MSAColumnGlobalAttention
from af2cpu.model.options import WHOLE_NORM_BYTES, ChunkSizes, Options
from af2cpu.model.presets import Architecture
from af2cpu.model.primitives import LayerNorm, add_in_place
from af2cpu.model.structure_module import StructureModule

A = Architecture()


def _randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random and fan-in scaled (zero-initialised gates would test nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("scale") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[0] ** -0.5)
    return module.eval()


def _set_options(module: torch.nn.Module, options: Options) -> None:
    for m in module.modules():
        if hasattr(m, "options"):
            m.options = options


def test_an_update_of_another_dtype_is_refused_not_rounded_or_lost():
    # The trunk, the template pair stack and the template embeddings add into a block of rows of the
    # pair: an out-of-place sum there would be dropped, an in-place one of fp32 into bf16 would round.
    pair = torch.zeros(4, 3, 2, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="float32 for a representation of dtype torch.bfloat16"):
        add_in_place(pair[1:3], torch.ones(2, 3, 2))
    assert not pair.any()
    assert add_in_place(pair[1:3], torch.ones(2, 3, 2, dtype=torch.bfloat16)).data_ptr() == pair[1].data_ptr()
    assert pair.sum(dim=(1, 2)).tolist() == [0, 6, 6, 0]


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
def test_attention_adds_into_a_tensor_of_its_output_shape_and_dtype_only(transposed):
    from af2cpu.model.attention import Attention

    attention = Attention(8, 8, 8, 2)
    x, mask = torch.randn(5, 3, 8), torch.ones(5, 3)
    options = Options(block_bytes=1)  # a block a row (column): the shape is checked before the first
    with torch.inference_mode():
        for add_to, match in [(torch.zeros(5, 3, 8, dtype=torch.bfloat16), "float32 for a representation of dtype"),
                              (torch.zeros(6, 3, 8), r"shape \(5, 3, 8\) for a tensor of shape \(6, 3, 8\)")]:
            with pytest.raises(TypeError, match=match):
                attention.self_attention(x, mask, transposed=transposed, options=options, add_to=add_to)
            assert not add_to.any()  # nothing was added before the error
        own = torch.zeros(5, 3, 8)
        assert attention.self_attention(x, mask, transposed=transposed, options=options, add_to=own) is own
        assert torch.equal(own, attention.self_attention(x, mask, transposed=transposed, options=options))


@pytest.mark.parametrize("options", [Options(), Options(chunks=ChunkSizes(triangle_channels=48, msa_column_attention=4),
                                                         block_bytes=1)],
                         ids=["default", "channel_slabs_one_row_steps_column_blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("extra", [False, True], ids=["evoformer", "extra_msa"])
def test_block_in_place_equals_out_of_place(monkeypatch, extra, dtype, options):
    # Bit for bit: every update has the representation's dtype, so adding it in place, a block of
    # rows (columns) at a time, rounds exactly as the out-of-place sum. With one-row steps the
    # attentions also normalise their input a block at a time (as above WHOLE_NORM_BYTES).
    if options.block_bytes == 1:
        monkeypatch.setattr(model_options, "WHOLE_NORM_BYTES", 0)
    stack = dataclasses.replace(A.extra_msa if extra else A.evoformer, num_block=1)
    block = _randomized(EvoformerIteration(stack, A.pair_channel), seed=3)
    _set_options(block, options)
    gen = torch.Generator().manual_seed(4)
    msa = torch.randn(7, 11, stack.msa_channel, generator=gen).to(dtype)
    pair = torch.randn(11, 11, A.pair_channel, generator=gen).to(dtype)
    msa_mask = (torch.rand(7, 11, generator=gen) > 0.2).to(dtype)
    pair_mask = torch.ones(11, 11, dtype=dtype)
    pair_mask[-2:] = pair_mask[:, -2:] = 0
    msa_in, pair_in = msa.clone(), pair.clone()
    with torch.inference_mode():
        out_msa, out_pair = block(msa, pair, msa_mask, pair_mask)
        assert torch.equal(msa, msa_in) and torch.equal(pair, pair_in)  # out of place: inputs kept
        own_msa, own_pair = msa.clone(), pair.clone()
        got_msa, got_pair = block(own_msa, own_pair, msa_mask, pair_mask, inplace=True)
    assert got_msa is own_msa and got_pair is own_pair  # one tensor each, updated in place
    assert got_pair.dtype == dtype and torch.equal(got_msa, out_msa) and torch.equal(got_pair, out_pair)
    assert not torch.equal(got_pair, pair_in)


def _pair(seed: int, dtype=torch.float32, n: int = 13) -> torch.Tensor:
    return torch.randn(n, n, A.pair_channel, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_heads_in_row_blocks_equal_the_whole_heads(monkeypatch, dtype):
    # One row per block (a 1-byte block) against the formulation the heads had: the whole pair upcast
    # to fp32, then the layer. A bf16 pair upcasts exactly, so the numbers are the same.
    pair, msa = _pair(5, dtype), torch.randn(6, 13, A.msa_channel, generator=torch.Generator().manual_seed(6)).to(dtype)
    distogram = _randomized(heads.DistogramHead(A.heads, A.pair_channel), seed=7)
    pae = _randomized(heads.PredictedAlignedErrorHead(A.heads, A.pair_channel), seed=8)
    masked = _randomized(heads.MaskedMsaHead(A.heads, A.msa_channel), seed=9)
    reps = {"pair": pair, "msa": msa}
    with torch.inference_mode():
        half = distogram.half_logits(pair.float())
        whole = {"distogram": half + half.transpose(0, 1), "pae": pae.logits(pair.float()),
                 "masked": masked.logits(msa.float())}
        monkeypatch.setattr(heads, "HEAD_BLOCK_BYTES", 1)
        blocked = {"distogram": distogram(reps)["logits"], "pae": pae(reps)["logits"], "masked": masked(reps)["logits"]}
        pieces = list(pae.logit_blocks(reps))
    assert len(pieces) == 13 and torch.equal(torch.cat([b for _, b in pieces]), blocked["pae"])
    for name, value in whole.items():
        assert blocked[name].dtype == torch.float32
        # measured 0 (bit for bit) on AVX512/AMX; a GEMM of one row may sum in another order elsewhere
        assert float((blocked[name] - value).abs().max() / value.abs().max()) <= 1e-6, name


def test_structure_module_reads_the_pair_in_row_blocks(monkeypatch):
    # The layer-normed pair (the IPA's bias and its pair values) a row at a time, from a bf16 pair,
    # against the whole fp32 layer-normed pair the module used to keep.
    sm_cfg = dataclasses.replace(A.structure_module, num_layer=2)
    module = _randomized(StructureModule(sm_cfg, A.seq_channel, A.pair_channel), seed=10)
    n = 13
    gen = torch.Generator().manual_seed(11)
    single = torch.randn(n, A.seq_channel, generator=gen)
    pair = _pair(12, torch.bfloat16, n)
    batch = {"aatype": torch.randint(0, 20, (n,), generator=gen), "seq_mask": torch.ones(n),
             "atom14_atom_exists": torch.ones(n, 14), "residx_atom37_to_atom14": torch.zeros(n, 37, dtype=torch.long),
             "atom37_atom_exists": torch.ones(n, 37)}
    ipa = module.fold_iteration.invariant_point_attention
    with torch.inference_mode():
        normed = module.pair_layer_norm(pair.float())
        bias = ipa.attention_2d(normed)
        act = module.initial_projection(module.single_layer_norm(single))
        whole = ipa(act, normed, batch["seq_mask"], _identity(n), bias)  # the first iteration's IPA
        out = module({"single": single, "pair": pair}, batch)  # small: the normed pair whole
        monkeypatch.setattr(heads, "HEAD_BLOCK_BYTES", 1)
        blocked = ipa(act, pair, batch["seq_mask"], _identity(n), None, module.pair_layer_norm)
        monkeypatch.setattr(structure_module, "STRUCTURE_WHOLE_PAIR_BYTES", 0)
        out_blocked = module({"single": single, "pair": pair}, batch)
    # measured 0 (bit for bit) on AVX512/AMX
    assert float((blocked - whole).abs().max() / whole.abs().max()) <= 1e-6
    positions = out["final_atom_positions"]
    assert torch.isfinite(positions).all()
    assert float((out_blocked["final_atom_positions"] - positions).abs().max()) <= 1e-4  # Å; measured 0


def _identity(n: int):
    from af2cpu.model.geometry import QuatRigid

    return QuatRigid.identity((n,)).to_rigid()


def test_aligned_error_from_blocks_equals_the_whole_metrics():
    # Compact outputs: PAE, pTM and ipTM from blocks of PAE logits (uneven blocks, each split
    # further into the metrics' own row blocks) are the numbers of the whole-logits functions.
    rng = np.random.default_rng(13)
    n, bins = 37, A.heads.pae_num_bins
    logits = rng.standard_normal((n, n, bins)).astype(np.float32) * 3
    breaks = np.linspace(0.0, A.heads.pae_max_error_bin, bins - 1)
    weights = (rng.random(n) > 0.1).astype(np.float32)
    asym = np.repeat([1, 2, 3], [12, 12, 13])
    cuts = [0, 5, 6, 20, n]
    blocks = [(slice(a, b), logits[a:b]) for a, b in itertools.pairwise(cuts)]
    got = confidence.aligned_error_from_blocks(blocks, breaks, n, weights, asym)
    whole = confidence.compute_predicted_aligned_error(logits, breaks)
    assert np.array_equal(got["predicted_aligned_error"], whole["predicted_aligned_error"])
    assert got["max_predicted_aligned_error"] == whole["max_predicted_aligned_error"]
    assert got["ptm"] == confidence.predicted_tm_score(logits, breaks, weights)
    assert got["iptm"] == confidence.predicted_tm_score(logits, breaks, weights, asym, interface=True)
    assert "aligned_confidence_probs" not in got


def _leaf(value):
    return value["logits"] if isinstance(value, dict) else value


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compact_outputs_and_outputs_without_representations_keep_the_same_numbers(precision):
    # A small whole model (1 Evoformer block, 4 extra-MSA blocks, random weights), two passes.
    from af2cpu.bench.model import make_inputs

    model, _, features = make_inputs(20, 4, 4, blocks=1, seed=14)
    model.set_options(Options(precision=precision))
    full = model.predict(features, num_recycle=1)
    # For a caller that drops the representations (af2cpu predict without output.save_representations)
    # none are converted, in any pass; everything else is the same.
    bare = model.predict(features, num_recycle=1, return_recycles=True, return_representations=False)
    assert set(full) - set(bare) == {"representations"} and set(bare) - set(full) == {"recycles"}
    assert not any("representations" in r for r in bare["recycles"])
    for name in ("distogram", "predicted_aligned_error", "plddt", "ptm", "aligned_confidence_probs"):
        assert np.array_equal(_leaf(bare[name]), _leaf(full[name])), name
    assert np.array_equal(bare["structure_module"]["final_atom_positions"],
                          full["structure_module"]["final_atom_positions"])
    model.set_options(Options(precision=precision, compact_outputs=True))
    compact = model.predict(features, num_recycle=1)
    left_out = {"distogram", "aligned_confidence_probs"}
    assert set(full) - set(compact) == left_out and left_out <= set(full)
    assert set(full["representations"]) - set(compact["representations"]) == {"pair", "msa"}
    assert full["representations"]["pair"].dtype == np.float32  # full outputs: fp32, as AlphaFold2's
    for name in ("predicted_aligned_error", "max_predicted_aligned_error", "ptm", "plddt", "ranking_confidence"):
        assert np.array_equal(compact[name], full[name]), name
    assert np.array_equal(compact["structure_module"]["final_atom_positions"],
                          full["structure_module"]["final_atom_positions"])


@pytest.mark.parametrize("starting", [True, False], ids=["starting_node", "ending_node"])
def test_triangle_attention_normalising_a_block_at_a_time_equals_whole(monkeypatch, starting):
    # Long pairs are normalised a block of rows (columns, for the ending node) at a time as the
    # attention reads them; small ones whole. One-row steps against the whole normalised pair.
    cls = evoformer.TriangleAttentionStartingNode if starting else evoformer.TriangleAttentionEndingNode
    module = _randomized(cls(A.pair_channel, A.evoformer.triangle_num_head), seed=15)
    pair = _pair(16)
    mask = torch.ones(13, 13)
    mask[-2:] = mask[:, -2:] = 0
    with torch.inference_mode():
        whole = module(pair, mask)
        module.options = Options(block_bytes=1)
        monkeypatch.setattr(model_options, "WHOLE_NORM_BYTES", 0)
        blocked = module(pair, mask)
    # measured 0 (bit for bit) on AVX512/AMX
    assert float((blocked - whole).abs().max() / whole.abs().max()) <= 1e-6


# Column blocks against the whole module: fp32 measured 1.1e-7 relative to the largest value with
# one-column blocks (a GEMM of another height), 0 with the others; bf16 measured 0 (bit for bit) on
# AVX512/AMX, a bf16 rounding step (2^-8) allowed for other kernels. (bf16 products of every height take one
# path, so the gate's product, bias and sigmoid round alike in a block of 9 rows and in the whole; while products
# of fewer than 64 rows took PyTorch's addmm, one- and five-column blocks differed by 1.3 steps.)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 2**-8)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("columns", [1, 5])  # 5 does not divide the 23 columns
def test_column_global_attention_in_blocks_of_columns_equals_whole(dtype, tolerance, columns):
    module = _randomized(MSAColumnGlobalAttention(A.extra_msa.msa_channel, A.extra_msa.msa_num_head), seed=17)
    gen = torch.Generator().manual_seed(18)
    msa = torch.randn(9, 23, A.extra_msa.msa_channel, generator=gen).to(dtype)
    mask = (torch.rand(9, 23, generator=gen) > 0.3).to(dtype)
    mask[-1] = 0  # a masked row
    mask[:, 6] = 0  # a masked column (its query averages to 0)
    with torch.inference_mode():
        whole = module(msa, mask)
        module.options = Options(chunks=ChunkSizes(msa_column_attention=columns))
        blocked = module(msa, mask)
        own = msa.clone()
        in_place = module(own, mask, inplace=True)
    print(f"column blocks of {columns}, {dtype}: {float((blocked - whole).abs().max() / whole.abs().max()):.2e}")
    assert blocked.dtype == dtype and float((blocked - whole).abs().max() / whole.abs().max()) <= tolerance
    # In place, each block's update is added into the MSA: the same sums as the out-of-place update.
    assert in_place is own and torch.equal(in_place, msa + blocked)


def test_column_global_attention_runs_whole_at_normal_sizes_and_in_blocks_when_long():
    options = Options()
    column = 5120 * 64 * 4  # one column of AlphaFold2's extra MSA, fp32 (1.25 MiB)
    assert options.norm_block_rows(None, 32, column) == 32  # 40 MiB: whole
    assert options.norm_block_rows(None, 3200, column) == WHOLE_NORM_BYTES // column  # 51 columns a block
    assert options.norm_block_rows(7, 3200, column) == 7  # within the memory chunk
    # Compiled blocks (no cache blocks): the chunk, or whole.
    assert Options(compile=True).norm_block_rows(None, 3200, column) == 3200
    assert Options(compile=True).norm_block_rows(16, 3200, column) == 16


def test_attentions_and_column_global_attention_switch_to_blocks_at_the_same_size(monkeypatch):
    msa = torch.zeros(7, 11, 8)
    norm = LayerNorm(8)
    nbytes, column = msa.numel() * 4, 7 * 8 * 4
    for limit, whole in [(nbytes, True), (nbytes - 1, False)]:
        monkeypatch.setattr(model_options, "WHOLE_NORM_BYTES", limit)
        assert (evoformer._normed_or_blocks(msa, norm)[1] is None) is whole
        assert (Options().norm_block_rows(None, 11, column) == 11) is whole


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [5, 30], ids=["few_rows", "outer_first"])  # both orders of the sums
def test_outer_product_mean_added_into_the_pair_a_block_at_a_time(dtype, rows):
    # Bit for bit: each block is divided and rounded as the whole update, then added in the pair's dtype.
    from af2cpu.model.evoformer import OuterProductMean

    stack = A.extra_msa
    module = _randomized(OuterProductMean(stack.msa_channel, A.pair_channel, stack.num_outer_channel), seed=19)
    module.options = Options(block_bytes=1)  # one row a step
    gen = torch.Generator().manual_seed(20)
    msa = torch.randn(rows, 11, stack.msa_channel, generator=gen).to(dtype)
    mask = (torch.rand(rows, 11, generator=gen) > 0.2).to(dtype)
    pair = _pair(21, dtype, n=11)
    with torch.inference_mode():
        want = pair + module(msa, mask)
        own = pair.clone()
        got = module(msa, mask, add_to=own)
    assert got is own and got.dtype == dtype and torch.equal(got, want)
