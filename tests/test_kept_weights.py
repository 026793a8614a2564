"""bf16 runs keep their weights' bf16 casts (``af2cpu.model.primitives.kept_weight``, ``Options.keep_weights``):
the same numbers as casting at every product, a copy no larger than the parameters' size in bf16 (what the memory
planner counts), made again when the parameters change, and nothing kept in fp32 runs or under autograd.

bf16 runs here on every CPU: emulated where the CPU has no native bf16 (slow but exact), so the sizes are small.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch

from af2cpu.bench.model import make_inputs
from af2cpu.model import primitives
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.options import Options
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import get_preset


def _kept_bytes(model: torch.nn.Module) -> int:
    total = 0
    for module in model.modules():
        for value in primitives.kept_weights(module).values():
            for tensor in value if isinstance(value, tuple) else (value,):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
    return total


def _block_and_inputs(rows: int = 8, length: int = 16):
    torch.manual_seed(0)
    arch = get_preset("model_1_ptm").architecture
    block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
    with torch.no_grad():
        for p in block.parameters():  # zero-initialised gates and biases would test nothing
            p.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(rows, length, arch.evoformer.msa_channel, generator=gen).bfloat16(),
              torch.randn(length, length, arch.pair_channel, generator=gen).bfloat16(),
              torch.ones(rows, length), torch.ones(length, length))
    return block, inputs


def _set(module: torch.nn.Module, options: Options) -> None:
    for m in module.modules():
        if hasattr(m, "options"):
            m.options = options


def test_a_bf16_block_keeps_its_casts_and_gives_the_same_numbers():
    block, inputs = _block_and_inputs()
    with torch.no_grad():
        _set(block, Options(precision="bf16", keep_weights=False))
        cast_each_call = block(*inputs)
        assert _kept_bytes(block) == 0
        _set(block, Options(precision="bf16"))
        first, again = block(*inputs), block(*inputs)
    # The same casts and sums in both ways: bit for bit, the first pass (which makes the copies) and the next.
    for a, b, c in zip(cast_each_call, first, again, strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)
    # Every matrix the block multiplies by is kept (the pair bias's few weights and the layer norms' fp32
    # scales are not), and no more than the parameters' size in bf16: what the planner counts.
    params = sum(p.numel() for p in block.parameters())
    assert 0.95 * 2 * params < _kept_bytes(block) <= 2 * params
    # Kept in the layout oneDNN's linear kernel reads: each matrix the transposed view of an (n, k) copy.
    w = primitives.kept_weights(block.msa_transition.transition1)[("weights", torch.bfloat16, None)]
    assert w.dtype is torch.bfloat16 and w.t().is_contiguous()
    assert torch.equal(w, block.msa_transition.transition1.weights.bfloat16())


def test_kept_casts_follow_the_parameters_they_came_from():
    block, inputs = _block_and_inputs()
    _set(block, Options(precision="bf16"))
    with torch.no_grad():
        block(*inputs)
        # Written in place, as loading parameters writes them: the next run casts the new values.
        for p in block.parameters():
            p.mul_(-1.5)
        kept = block(*inputs)
        _set(block, Options(precision="bf16", keep_weights=False))
        fresh = block(*inputs)
        assert all(torch.equal(a, b) for a, b in zip(kept, fresh, strict=True))
        # A parameter replaced by another tensor, the old one still alive (a caller may hold it).
        layer = block.pair_transition.transition2
        old = layer.weights
        layer.weights = torch.nn.Parameter(torch.randn_like(layer.weights))
        _set(block, Options(precision="bf16"))
        kept = block(*inputs)
        _set(block, Options(precision="bf16", keep_weights=False))
        assert all(torch.equal(a, b) for a, b in zip(kept, block(*inputs), strict=True))
        assert old.shape == layer.weights.shape


def test_fp32_runs_and_autograd_keep_nothing():
    block, inputs = _block_and_inputs()
    _set(block, Options())
    with torch.no_grad():
        block(*(t.float() for t in inputs))
    assert _kept_bytes(block) == 0
    # fp32 weights keep their layout: no copy for the concatenations fp32 products read.
    w = block.pair_transition.transition1.weights
    assert primitives.linear_layout(w) is w and primitives.linear_layout(w.bfloat16()).t().is_contiguous()
    # Where autograd records, the cast belongs in its graph: a layer's bf16 product carries it, nothing is kept.
    layer = block.pair_transition.transition2
    _set(layer, Options(precision="bf16"))
    layer(torch.randn(64, layer.weights.shape[0]).bfloat16()).float().sum().backward()
    assert layer.weights.grad is not None and _kept_bytes(layer) == 0


def test_a_bf16_model_keeps_within_the_planners_count_and_reloads():
    # The whole network (templates, extra-MSA stack, Evoformer, heads) in bf16: its kept casts stay within the
    # parameters' size in bf16, and loading other parameters into the same model gives what a model built with
    # them gives.
    model, _, features = make_inputs(16, 4, 4, blocks=1, templates=2)
    model.set_options(Options(precision="bf16"))
    model.predict(features, num_recycle=0)
    params = sum(p.numel() for p in model.parameters())
    assert 0 < _kept_bytes(model) <= 2 * params
    other = random_params(model, seed=5)
    load_params(model, other)
    reloaded = model.predict(features, num_recycle=0)
    fresh, _, _ = make_inputs(16, 4, 4, blocks=1, templates=2)
    load_params(fresh, other)
    fresh.set_options(Options(precision="bf16"))
    expected = fresh.predict(features, num_recycle=0)
    for name in ("pair", "msa_first_row", "single"):
        np.testing.assert_array_equal(reloaded["representations"][name], expected["representations"][name])


def test_a_module_that_keeps_casts_still_saves_and_copies():
    # The kept casts live beside the module: torch.save pickles the module as before (their stamps hold weak
    # references, which do not pickle), and a copy keeps nothing until it runs.
    block, inputs = _block_and_inputs()
    _set(block, Options(precision="bf16"))
    with torch.no_grad():
        expected = block(*inputs)
        assert _kept_bytes(block) > 0
        saved = io.BytesIO()
        torch.save(block, saved)
        saved.seek(0)
        loaded = torch.load(saved, weights_only=False)  # our own file, written just above
        twin = copy.deepcopy(block)
        assert _kept_bytes(loaded) == 0 and _kept_bytes(twin) == 0
        for model in (loaded, twin):
            assert all(torch.equal(a, b) for a, b in zip(model(*inputs), expected, strict=True))
