"""af2cpu's element-wise kernels (model/csrc/attention.cpp, af2cpu.model.kernels; runtime.elementwise): the layer
norm and the gate, equal to float64 to float noise in fp32 and to bf16 rounding in bf16, on the tensors the network
passes them (blocks of rows, rows of a wider tensor, channel counts that are not a multiple of the vectors,
strided and permuted outer dimensions), chosen as runtime.elementwise says.

Tolerances, from errors measured against float64 on a Xeon with AMX: the layer norm (inputs ~N(1, 3²), scale and
offset unit normal; outputs up to ~12) at most 1.1e-6 absolute in fp32 (PyTorch's 1.9e-6), bounded at 1e-5; in
bf16 at most 3.9e-3 relative, half a bf16 step (the statistics are fp32, the output is rounded once; PyTorch's
the same), bounded at one step (2^-8) of each output, and within two steps of the largest output of PyTorch's.
The gate (a, g ~ N(0, 3²)): fp32 at most 1.2e-6 absolute (PyTorch's the same), bounded at 1e-5; bf16 half a step
(one rounding; PyTorch's sigmoid then product rounds twice: up to 5e-2 absolute where ours is 3.1e-2), bounded at
one step of each output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from af2cpu.errors import ConfigError
from af2cpu.model import kernels
from af2cpu.model.options import Options
from af2cpu.model.primitives import LayerNorm, add_in_place
from af2cpu.runtime import precision

BUILD = kernels.load()
needs_build = pytest.mark.skipif(BUILD is None, reason="af2cpu's kernels need AVX2 and a C++ compiler")

# Channels: AlphaFold2's (64 extra MSA and templates, 128 pair, 256 MSA, 384 single), fewer than a vector, and
# counts that leave a tail after whole vectors (and after pairs of them).
CHANNELS = [8, 37, 64, 128, 200, 256, 384]
LAYOUTS = ["contiguous", "block of rows", "rows of a wider tensor", "block of columns", "columns first",
           "rows of four dimensions", "channel-first"]


def _rows(c: int, layout: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    whole = (torch.randn(9, 7, c + 5, generator=gen) * 3 + 1).to(dtype)
    if layout == "contiguous":
        return whole[..., :c].contiguous()
    if layout == "block of rows":  # pair[rows]: a block of rows of a contiguous tensor
        return whole[..., :c].contiguous()[2:6]
    if layout == "block of columns":  # msa[:, cols]: rows of two strides
        return whole[..., :c].contiguous()[:, 1:5]
    if layout == "columns first":  # msa[:, cols].transpose(0, 1), the column attentions': the outer stride smaller
        return whole[..., :c].contiguous()[:, 1:5].transpose(0, 1)
    if layout == "rows of four dimensions":  # leading dimensions that group into two strides
        return whole[..., :c].contiguous().view(3, 3, 7, c)[:, :, 2:6]
    if layout == "channel-first":  # the triangle multiplication's sums (c, rows, L), a block of rows, permuted
        planes = (torch.randn(c, 9, 7, generator=gen) * 3 + 1).to(dtype)
        return planes[:, 2:6].permute(1, 2, 0)
    return whole.reshape(-1, c + 5)[:, :c]  # rows of a wider tensor: a row stride other than the channels


def check(op, x: torch.Tensor) -> None:
    c = x.shape[-1]
    gen = torch.Generator().manual_seed(1)
    scale, offset = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    got = op(x, scale, offset, 1e-5)
    assert got.shape == x.shape and got.dtype == x.dtype and got.is_contiguous()
    want = F.layer_norm(x.double(), (c,), scale.double(), offset.double(), 1e-5)
    error = (got.double() - want).abs()
    if x.dtype is torch.float32:
        assert float(error.max()) < 1e-5
    else:  # one bf16 rounding of the fp32 result
        assert bool((error <= want.abs() * 2.0**-8 + 1e-6).all())
        pytorch = F.layer_norm(x, (c,), scale, offset, 1e-5)
        assert float((got.float() - pytorch.float()).abs().max()) <= float(want.abs().max()) * 2.0**-7


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", CHANNELS)
def test_layer_norm_equals_float64(c, layout, dtype):
    x = _rows(c, layout, dtype)
    assert kernels.layer_norm_applies(x)
    check(kernels.layer_norm, x)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("positions", [1, 15, 16, 17, 40])
def test_channel_first_tiles_and_their_tails(positions, dtype):
    """The channel-first kernel normalises 16 positions a tile and the rest one at a time: every count of positions
    around a tile, and an operand read in place (the operator takes the permuted view itself, no copy)."""
    gen = torch.Generator().manual_seed(positions)
    for c in (8, 37, 128):
        planes = (torch.randn(c, 3 * positions, generator=gen) * 3 + 1).to(dtype)
        x = planes[:, positions:2 * positions].t()  # (positions, c), each channel's positions contiguous
        assert kernels.layer_norm_applies(x) and x.stride(-1) == 3 * positions
        check(torch.ops.af2cpu.layer_norm, x)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_nan_stays_in_its_row(dtype):
    x = _rows(128, "contiguous", dtype)
    x[3, 2, 5] = float("nan")
    got = kernels.layer_norm(x, torch.ones(128), torch.zeros(128), 1e-5)
    assert bool(got[3, 2].isnan().all())
    got[3, 2] = 0
    assert bool(got.isfinite().all())


@needs_build
def test_the_operator_refuses_rows_it_does_not_take():
    x = torch.randn(4, 6, 32)
    with pytest.raises(RuntimeError, match="channels must be contiguous, or each channel's positions"):
        torch.ops.af2cpu.layer_norm(x.transpose(1, 2), torch.ones(6), torch.zeros(6), 1e-5)
    with pytest.raises(ValueError, match="does not take"):
        kernels.layer_norm(torch.randn(4, 5, 6, 32)[:, 1:3, 2:4], torch.ones(32), torch.zeros(32), 1e-5)
    with pytest.raises(RuntimeError, match="scale and offset must be contiguous fp32"):
        kernels.layer_norm(x, torch.ones(32).bfloat16(), torch.zeros(32), 1e-5)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        torch.ops.af2cpu.layer_norm(x.double(), torch.ones(32), torch.zeros(32), 1e-5)
    assert kernels.layer_norm(x[:0], torch.ones(32), torch.zeros(32), 1e-5).shape == (0, 6, 32)


def test_applies_to_rows_of_two_strides_and_to_channel_first_runs():
    x = torch.randn(6, 5, 32)
    assert kernels.layer_norm_applies(x) and kernels.layer_norm_applies(x[1:4]) and kernels.layer_norm_applies(x[:, 2])
    assert kernels.layer_norm_applies(x.reshape(-1, 32)[:, :16])  # a row stride of 32 for 16 channels
    assert kernels.layer_norm_applies(x[:, 1:3])  # a block of columns: rows of two strides
    assert not kernels.layer_norm_applies(torch.randn(4, 5, 6, 32)[:, 1:3, 2:4])  # rows of three strides
    # x read as channel-first, (6 channels, 5, 32): each channel's 160 positions one run, in order
    assert kernels.layer_norm_applies(x.permute(1, 2, 0))
    assert kernels.layer_norm_applies(x.permute(1, 2, 0)[1:3])  # a block of its rows: still one run
    assert not kernels.layer_norm_applies(x.permute(1, 2, 0)[:, 1:3])  # a block of its columns: runs with gaps
    assert not kernels.layer_norm_applies(x.transpose(0, 2))  # one run, but its positions out of order
    assert not kernels.layer_norm_applies(x.double())


@needs_build
def test_auto_takes_the_kernel_measured_faster_once_per_cpu_kind(fresh_decisions, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a cache of its own
    measured = []

    def measure(dtype):
        measured.append(dtype)
        return {"speedup": 1.5 if dtype == "fp32" else 1.02}

    monkeypatch.setattr(kernels, "measure_elementwise_speedup", measure)
    monkeypatch.setattr(kernels, "native_bf16", lambda: True)
    assert kernels.uses_elementwise("auto", torch.float32)
    assert not kernels.uses_elementwise("auto", torch.bfloat16)  # below SPEEDUP_NEEDED
    assert not kernels.uses_elementwise("pytorch", torch.float32)
    assert kernels.uses_elementwise("af2cpu", torch.bfloat16)
    assert not kernels.uses_elementwise("af2cpu", torch.float64)
    assert measured == ["fp32", "bf16"]
    assert precision.kept_file(f"elementwise-fp32-{kernels.source_digest()}").exists()
    # Kept per kind of CPU: a new process (here: forgotten decisions) reads the figure instead of measuring.
    kernels.elementwise_speedup.cache_clear()
    kernels.uses_elementwise.cache_clear()
    assert kernels.uses_elementwise("auto", torch.float32) and measured == ["fp32", "bf16"]
    with pytest.raises(ConfigError, match="runtime.elementwise='fastest'"):
        kernels.uses_elementwise("fastest", torch.float32)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_module_runs_af2cpus_kernel_where_it_is_chosen(dtype, monkeypatch):
    """LayerNorm with runtime.elementwise=af2cpu: af2cpu's kernel, on rows as they are (a block of columns) and on
    a contiguous copy of rows it does not take as they are (rows of three strides), as PyTorch's kernel copies
    them; PyTorch's while autograd records."""
    calls = []
    original = kernels.layer_norm
    monkeypatch.setattr(kernels, "layer_norm", lambda *args: calls.append(1) or original(*args))
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.scale.normal_()
        norm.offset.normal_()
    x = torch.randn(6, 5, 32).to(dtype)
    x4 = x.view(2, 3, 5, 32)
    with torch.no_grad():
        plain = norm(x)
        norm.options = Options(elementwise="af2cpu")
        ours, columns, strided = norm(x), norm(x[:, 1:3]), norm(x4[:, 1:3, 2:4])
    assert len(calls) == 3 and columns.dtype == dtype and columns.is_contiguous() and strided.is_contiguous()
    assert float((ours.float() - plain.float()).abs().max()) <= float(plain.float().abs().max()) * 2.0**-7
    assert torch.equal(columns, ours[:, 1:3])  # row by row as on the whole
    assert torch.equal(strided, ours.view(2, 3, 5, 32)[:, 1:3, 2:4])
    norm(x)  # autograd on: PyTorch's
    assert len(calls) == 3


def check_gate(op, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None,
               biases: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    out = torch.full_like(a, float("nan"))
    if biases is None:
        op(a, g, mask, out)
        a_in, g_in = a.double(), g.double()
    else:
        op(a, g, mask, out, *biases)
        a_in, g_in = (t.double() + bias.double()[:, None, None] for t, bias in zip((a, g), biases, strict=True))
    want = a_in * torch.sigmoid(g_in) * (1 if mask is None else mask.double())
    error = (out.double() - want).abs()
    if a.dtype is torch.float32:
        assert float(error.max()) < 1e-5
    else:
        assert bool((error <= want.abs() * 2.0**-8 + 1e-30).all())


def _gate_operands(dtype: torch.dtype, m: int, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    block = (torch.randn(4, 6, m, generator=gen) * 3).to(dtype)
    mask = (torch.rand(m, generator=gen) > 0.3).float()
    return block, mask


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("m", [5, 16, 37, 256])
def test_gate_equals_float64(m, dtype):
    """(B, N, M) operands as the network passes them: halves of one projection, a gate that is a slice of a wider
    tensor, a permuted value, written into a block of a larger output; with and without a mask."""
    block, mask = _gate_operands(dtype, m)
    a, g = block[:2], block[2:]  # the triangle multiplication's halves
    wide = torch.randn(6, 4, m + 3).to(dtype)
    permuted = wide[..., :m].transpose(0, 1)  # (4, 6, m): outer strides swapped, rows of a wider tensor
    larger = torch.empty(2, 10, m, dtype=dtype)
    for op_a, op_g, msk in ((a, g, None), (a, g, mask), (permuted[:2], g, None), (a, permuted[2:], mask)):
        check_gate(lambda *args: torch.ops.af2cpu.gated(*args), op_a, op_g, msk)
    torch.ops.af2cpu.gated(a, g, mask, larger[:, 3:9])
    assert torch.equal(larger[:, 3:9], kernels.gated(a, g, mask))  # a block of a larger output, the same numbers


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gate_with_a_bias_per_outer_index_equals_float64(dtype):
    """The triangle multiplication's channel-first projections (B channels, one row of a block's positions): each
    channel's fp32 bias added to its projection and its gate in the kernel, with and without the pair mask."""
    block, mask = _gate_operands(dtype, 37)
    gen = torch.Generator().manual_seed(5)
    biases = (torch.randn(2, generator=gen), torch.randn(2, generator=gen))
    a, g = block[:2], block[2:]
    for msk in (None, mask):
        check_gate(lambda *args: torch.ops.af2cpu.gated(*args), a, g, msk, biases)
    out = kernels.gated(a, g, mask, biases=biases)
    assert not torch.equal(out, kernels.gated(a, g, mask))  # the biases were added
    # A zero bias gives the unbiased numbers, bit for bit.
    zeros = (torch.zeros(2), torch.zeros(2))
    assert torch.equal(kernels.gated(a, g, mask, biases=zeros), kernels.gated(a, g, mask))
    with pytest.raises(RuntimeError, match="give both biases or neither"):
        torch.ops.af2cpu.gated(a, g, None, torch.empty_like(a), biases[0], None)
    with pytest.raises(RuntimeError, match="a_bias and g_bias must be contiguous fp32 \\(B,\\)"):
        torch.ops.af2cpu.gated(a, g, None, torch.empty_like(a), torch.zeros(3), torch.zeros(3))


@needs_build
def test_the_gate_saturates_without_overflow():
    a = torch.ones(1, 1, 6)
    g = torch.tensor([[[-200.0, -88.0, -20.0, 20.0, 88.0, 200.0]]])
    out = kernels.gated(a, g)
    assert bool(out.isfinite().all()) and float(out[0, 0, 0]) == 0.0 and float(out[0, 0, -1]) == 1.0
    assert torch.allclose(out, torch.sigmoid(g), atol=1e-7)


@needs_build
def test_the_gate_refuses_operands_it_does_not_take():
    a = torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError, match="gated: g must be \\(B, N, M\\) as the first operand"):
        torch.ops.af2cpu.gated(a, a[:, :2], None, torch.empty_like(a))
    with pytest.raises(RuntimeError, match="out must be"):
        torch.ops.af2cpu.gated(a, a, None, torch.empty(2, 3, 8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="mask must be contiguous fp32"):
        torch.ops.af2cpu.gated(a, a, torch.ones(8).bfloat16(), torch.empty_like(a))
    with pytest.raises(RuntimeError, match="gated: g must be"):  # its last dimension not contiguous
        torch.ops.af2cpu.gated(a, torch.randn(2, 8, 3).transpose(1, 2), None, torch.empty_like(a))


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_residual_sums_are_pytorchs_numbers(dtype):
    """add_into on the blocks the network adds into (rows, columns, a whole representation; updates contiguous or
    with their outer dimensions swapped): bit for bit PyTorch's sum (fp32, rounded once)."""
    gen = torch.Generator().manual_seed(3)
    whole = (torch.randn(9, 11, 24, generator=gen) * 3).to(dtype)
    for index in (slice(None), slice(2, 7), (slice(None), slice(3, 8)), (slice(None), slice(None), slice(5, 21))):
        act = whole.clone()
        block = act[index]
        for update in ((torch.randn(block.shape, generator=gen) * 3).to(dtype),
                       torch.randn(block.shape[1], block.shape[0], block.shape[2], generator=gen).to(dtype).transpose(0, 1)):
            want = whole.clone()
            want[index] += update
            assert kernels.add_into(block, update)
            assert torch.equal(act, want)
            whole = want


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_residual_sums_divided_by_counts_are_pytorchs_numbers(dtype):
    """add_into with a divisor (the outer product mean's counts of sequence pairs, one per pair of residues): bit for
    bit dividing the update in place, then PyTorch's sum, on a block of rows and a block of columns of the pair, with
    channel counts that leave a tail after whole vectors; the update itself is left as it was. Layouts it does not
    take are refused, nothing done."""
    gen = torch.Generator().manual_seed(5)
    for c in (24, 37, 128):
        whole = (torch.randn(9, 11, c, generator=gen) * 3).to(dtype)
        counts = torch.randint(1, 600, (9, 11, 1), generator=gen).float() + 1e-3
        for index in (slice(2, 7), (slice(None), slice(3, 8))):
            act = whole.clone()
            update = (torch.randn(act[index].shape, generator=gen) * 300).to(dtype)
            kept = update.clone()
            want = whole.clone()
            want[index].add_(update.clone().div_(counts[index]))
            assert kernels.add_into(act[index], update, counts[index])
            assert torch.equal(act, want) and torch.equal(update, kept)
    act = torch.zeros(4, 5, 8, dtype=dtype)
    assert not kernels.add_into(act, torch.ones(4, 5, 8, dtype=dtype), torch.ones(4, 5, 2))  # counts per channel
    assert not kernels.add_into(act.transpose(0, 2), torch.ones(8, 5, 4, dtype=dtype), torch.ones(8, 5, 1))
    assert not act.any()
    with pytest.raises(RuntimeError, match="divisor must be contiguous fp32"):
        torch.ops.af2cpu.add_into(act, act.clone(), torch.ones(4, 5, dtype=torch.float64))


def test_rows3_views_group_the_dimensions_each_tensor_allows():
    x = torch.randn(4, 5, 6, 8)
    (a, b) = kernels.as_rows3(x[:, :, 2:4], x[:, :, 2:4].contiguous())
    assert a.shape == b.shape == (1, 20, 16) and torch.equal(a, b)  # (4, 5) rows of one stride in both
    assert kernels.as_rows3(x, x.transpose(0, 1).contiguous().transpose(0, 1)) is not None  # two groups swapped
    y = torch.randn(4, 5, 6, 7, 8)[:, 1:3, 2:4, 3:5]
    assert kernels.as_rows3(y, y.contiguous()) is None  # four groups of dimensions in the first
    assert kernels.as_rows3(x, x[..., :4]) is None  # shapes differ
    # Rows of channels (add_into's with a divisor, the layer norm's): the channels stay one dimension.
    (c,) = kernels.as_rows3(x[:, :, 2:4], channels_apart=True)
    assert c.shape == (20, 2, 8) and torch.equal(c, x[:, :, 2:4].reshape(20, 2, 8))
    (a, b) = kernels.as_rows3(x, x.contiguous(), channels_apart=True)
    assert a.shape == (1, 120, 8) and torch.equal(a, b)
    assert kernels.as_rows3(y, channels_apart=True) is None  # three groups of leading dimensions
    assert kernels.as_rows3(x.transpose(2, 3), channels_apart=True) is None  # channels not contiguous


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_add_in_place_takes_af2cpus_sum_for_bf16_where_chosen(dtype, monkeypatch):
    calls = []
    add_into = kernels.add_into
    monkeypatch.setattr(kernels, "add_into", lambda *args: calls.append(1) or add_into(*args))
    act, update = torch.randn(2, 6, 5, 32).to(dtype)
    want = act + update
    with torch.no_grad():
        assert add_in_place(act[:, 1:4], update[:, 1:4], Options(elementwise="af2cpu")) is not None
        add_in_place(act[:, 4:], update[:, 4:], Options(elementwise="pytorch"))
        add_in_place(act[:, :1], update[:, :1])
    assert torch.equal(act, want)
    assert len(calls) == (1 if dtype is torch.bfloat16 else 0)  # fp32 sums stay PyTorch's (a copy's speed)
    # Divided by counts first: af2cpu's sum for bf16 where chosen, PyTorch's division and sum elsewhere, one result.
    counts = torch.arange(1, 31, dtype=torch.float32).view(6, 5, 1) + 1e-3
    want = act + (update.float() / counts).to(dtype)  # the quotient rounded to the update's dtype, then the sum
    results = []
    for elementwise in ("af2cpu", "pytorch"):
        own = act.clone()
        with torch.no_grad():
            add_in_place(own[:, 1:], update[:, 1:].clone(), Options(elementwise=elementwise), divisor=counts[:, 1:])
            add_in_place(own[:, :1], update[:, :1].clone(), Options(elementwise=elementwise), divisor=counts[:, :1])
        results.append(own)
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], want)
    assert len(calls) == (3 if dtype is torch.bfloat16 else 0)
