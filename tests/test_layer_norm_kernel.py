"""af2cpu's layer norm (model/csrc/attention.cpp, af2cpu.model.kernels.layer_norm): equal to a float64 layer norm
to float noise in fp32 and to bf16 rounding in bf16, on the rows the network passes it (blocks of rows, rows of a
wider tensor, channel counts that are not a multiple of the vectors), chosen as runtime.layer_norm says, and
PyTorch's where it does not take the rows.

Tolerances, from errors measured against float64 on a Xeon with AMX (inputs ~N(1, 3²), scale and offset unit
normal; outputs up to ~12): fp32 at most 1.1e-6 absolute (PyTorch's 1.9e-6), bounded at 1e-5; bf16 at most
3.9e-3 relative, half a bf16 step (the statistics are fp32, the output is rounded once; PyTorch's the same),
bounded at one step (2^-8) of each output, and within two steps of the largest output of PyTorch's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from af2cpu.errors import ConfigError
from af2cpu.model import kernels
from af2cpu.model.options import Options
from af2cpu.model.primitives import LayerNorm
from af2cpu.runtime import precision

BUILD = kernels.load()
needs_build = pytest.mark.skipif(BUILD is None, reason="af2cpu's kernels need AVX2 and a C++ compiler")

# Channels: AlphaFold2's (64 extra MSA and templates, 128 pair, 256 MSA, 384 single), fewer than a vector, and
# counts that leave a tail after whole vectors (and after pairs of them).
CHANNELS = [8, 37, 64, 128, 200, 256, 384]


def _rows(c: int, layout: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    whole = (torch.randn(9, 7, c + 5, generator=gen) * 3 + 1).to(dtype)
    if layout == "contiguous":
        return whole[..., :c].contiguous()
    if layout == "block of rows":  # pair[rows]: a block of rows of a contiguous tensor
        return whole[..., :c].contiguous()[2:6]
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
@pytest.mark.parametrize("layout", ["contiguous", "block of rows", "rows of a wider tensor"])
@pytest.mark.parametrize("c", CHANNELS)
def test_layer_norm_equals_float64(c, layout, dtype):
    x = _rows(c, layout, dtype)
    assert kernels.layer_norm_applies(x)
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
    with pytest.raises(RuntimeError, match="channels must be contiguous"):
        kernels.layer_norm(x.transpose(1, 2), torch.ones(6), torch.zeros(6), 1e-5)
    with pytest.raises(RuntimeError, match="scale and offset must be contiguous fp32"):
        kernels.layer_norm(x, torch.ones(32).bfloat16(), torch.zeros(32), 1e-5)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        kernels.layer_norm(x.double(), torch.ones(32), torch.zeros(32), 1e-5)
    assert kernels.layer_norm(x[:0], torch.ones(32), torch.zeros(32), 1e-5).shape == (0, 6, 32)


def test_applies_only_to_rows_of_one_stride():
    x = torch.randn(6, 5, 32)
    assert kernels.layer_norm_applies(x) and kernels.layer_norm_applies(x[1:4]) and kernels.layer_norm_applies(x[:, 2])
    assert kernels.layer_norm_applies(x.reshape(-1, 32)[:, :16])  # a row stride of 32 for 16 channels
    assert not kernels.layer_norm_applies(x[:, 1:3])  # a block of columns: rows of two strides
    assert not kernels.layer_norm_applies(x.transpose(0, 2))  # channels not contiguous
    assert not kernels.layer_norm_applies(x.double())


@needs_build
def test_auto_takes_the_kernel_measured_faster_once_per_cpu_kind(fresh_decisions, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a cache of its own
    measured = []

    def measure(dtype):
        measured.append(dtype)
        return {"speedup": 1.5 if dtype == "fp32" else 1.02}

    monkeypatch.setattr(kernels, "measure_layer_norm_speedup", measure)
    monkeypatch.setattr(kernels, "native_bf16", lambda: True)
    assert kernels.uses_layer_norm("auto", torch.float32)
    assert not kernels.uses_layer_norm("auto", torch.bfloat16)  # below SPEEDUP_NEEDED
    assert not kernels.uses_layer_norm("pytorch", torch.float32)
    assert kernels.uses_layer_norm("af2cpu", torch.bfloat16)
    assert not kernels.uses_layer_norm("af2cpu", torch.float64)
    assert measured == ["fp32", "bf16"]
    assert precision.kept_file(f"layer-norm-fp32-{kernels.source_digest()}").exists()
    # Kept per kind of CPU: a new process (here: forgotten decisions) reads the figure instead of measuring.
    kernels.layer_norm_speedup.cache_clear()
    kernels.uses_layer_norm.cache_clear()
    assert kernels.uses_layer_norm("auto", torch.float32) and measured == ["fp32", "bf16"]
    with pytest.raises(ConfigError, match="runtime.layer_norm='fastest'"):
        kernels.uses_layer_norm("fastest", torch.float32)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_module_runs_af2cpus_kernel_where_it_applies(dtype, monkeypatch):
    """LayerNorm with runtime.layer_norm=af2cpu: af2cpu's kernel on rows it takes, PyTorch's on the others (a
    block of columns) and while autograd records; both give the module's result."""
    calls = []
    original = kernels.layer_norm
    monkeypatch.setattr(kernels, "layer_norm", lambda *args: calls.append(1) or original(*args))
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.scale.normal_()
        norm.offset.normal_()
    x = torch.randn(6, 5, 32).to(dtype)
    with torch.no_grad():
        plain = norm(x)
        norm.options = Options(layer_norm="af2cpu")
        ours, columns = norm(x), norm(x[:, 1:3])
    assert len(calls) == 1 and columns.dtype == dtype
    assert float((ours.float() - plain.float()).abs().max()) <= float(plain.float().abs().max()) * 2.0**-7
    assert torch.equal(columns, plain[:, 1:3])  # PyTorch's, row by row as on the whole
    norm(x)  # autograd on: PyTorch's
    assert len(calls) == 1
