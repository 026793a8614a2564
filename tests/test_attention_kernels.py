"""af2cpu's attention kernels (model/csrc/attention.cpp, af2cpu.model.kernels): built for this CPU, equal to
float64 attention to float noise on every path the network can take (fp32 and bf16, AMX where the CPU has it,
the AVX2 build wherever the CPU has AVX2), chosen as runtime.attention says, and PyTorch's kernel where they
cannot be built.

Tolerances, from errors measured against float64 on a Xeon with AMX (inputs unit normal, biases up to ~7):
fp32 at most 1.6e-6 (PyTorch's fp32 kernel 0.9e-6 on the same inputs), bounded at 1e-5; bf16 (inputs, bias
and output rounded to bf16) at most 7.2e-3, bounded at 1.2e-2 and at 1.5x PyTorch's bf16 kernel's error on
the same inputs or one bf16 step at the largest output, whichever is larger (measured up to 1.7x PyTorch's
where both are under 2e-3: a single output rounded the other way).
"""

from __future__ import annotations

import logging

import pytest
import test_elementwise_kernels as elementwise_tests
import torch
import torch.nn.functional as F

from af2cpu.errors import ConfigError
from af2cpu.model import kernels
from af2cpu.model.attention import MASK_BIAS, Attention
from af2cpu.model.options import Options
from af2cpu.model.primitives import LayerNorm
from af2cpu.runtime import precision

BUILD = kernels.load()
needs_build = pytest.mark.skipif(BUILD is None, reason="af2cpu's attention kernels need AVX2 and a C++ compiler")

# (batch, heads, queries, keys, head size, value head size): AlphaFold2's head sizes, lengths that are not
# multiples of the kernels' blocks (16 queries, 16 or 32 keys), fewer keys than a vector (template attention's
# 4 slots), a value head size other than the key's.
SHAPES = [(3, 2, 21, 37, 8, 8), (2, 4, 16, 32, 16, 16), (2, 3, 33, 70, 32, 32), (2, 2, 5, 4, 16, 16),
          (2, 2, 17, 129, 32, 16)]
BIASES = ["none", "shared", "per batch element"]


def _operands(b, h, nq, nk, d, dv, bias, masked, dtype, seed=0):
    """q, k, v as strided views of (batch, sequence, heads, c) tensors, as the attention modules pass them; a
    bias in q's dtype; an fp32 key bias with some keys masked (never all of a batch element's)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, c, generator=gen).to(dtype).transpose(1, 2)
               for n, c in ((nq, d), (nk, d), (nk, dv)))
    shape = {"none": None, "shared": (1, h, nq, nk), "per batch element": (b, 1, 1, nk)}[bias]
    bias = None if shape is None else (2 * torch.randn(*shape, generator=gen)).to(dtype)
    key_bias = None
    if masked:
        mask = (torch.rand(b, nk, generator=gen) > 0.3).float()
        mask[:, 0] = 1.0
        key_bias = (MASK_BIAS * (1.0 - mask)).contiguous()
    return q, k, v, bias, key_bias


def _float64(q, k, v, bias, key_bias):
    full = None if bias is None else bias.double()
    if key_bias is not None:
        mask_term = key_bias.double()[:, None, None, :]
        full = mask_term if full is None else full + mask_term
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=full, scale=q.shape[-1] ** -0.5)


def _pytorch(q, k, v, bias, key_bias):
    full = bias
    if key_bias is not None:
        mask_term = key_bias.to(q.dtype)[:, None, None, :]
        full = mask_term if full is None else full + mask_term
    return F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=q.shape[-1] ** -0.5)


def _check(got, q, k, v, bias, key_bias):
    assert got.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[-1]) and got.dtype == q.dtype
    # As PyTorch's CPU kernel: (batch, queries, heads, c) in memory.
    assert got.transpose(1, 2).is_contiguous()
    want = _float64(q, k, v, bias, key_bias)
    error = float((got.double() - want).abs().max())
    if q.dtype is torch.float32:
        assert error < 1e-5  # measured <= 1.6e-6
    else:
        # Rounding to bf16 is discrete: a small error may double. So the bound is 1.5x PyTorch's error or one
        # bf16 step (2^-7, relative) at the largest output, whichever is larger.
        theirs = float((_pytorch(q, k, v, bias, key_bias).double() - want).abs().max())
        assert error <= max(1.5 * theirs, 2**-7 * float(want.abs().max())) and error < 1.2e-2


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("masked", [False, True], ids=["all keys", "masked keys"])
@pytest.mark.parametrize("bias", BIASES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}x{s[1]}x{s[2]}x{s[3]}-c{s[4]}-{s[5]}" for s in SHAPES])
def test_kernel_equals_float64_attention(shape, bias, masked, dtype):
    """The kernel af2cpu.model.kernels.attention runs (on AMX CPUs bf16 goes to the tiles) and the portable one."""
    q, k, v, b, key_bias = _operands(*shape, bias, masked, dtype)
    _check(kernels.attention(q, k, v, b, key_bias, q.shape[-1] ** -0.5), q, k, v, b, key_bias)
    _check(torch.ops.af2cpu.attention(q, k, v, b, key_bias, q.shape[-1] ** -0.5), q, k, v, b, key_bias)


@pytest.mark.skipif(BUILD != "amx", reason="this CPU has no AMX (or oneDNN's ISA cap forbids it)")
def test_amx_kernel_equals_float64_attention():
    """The tile kernel itself, at every shape, bias and mask of the test above."""
    for shape in SHAPES:
        for bias in BIASES:
            for masked in (False, True):
                q, k, v, b, key_bias = _operands(*shape, bias, masked, torch.bfloat16)
                got = torch.ops.af2cpu.attention_amx(q, k, v, b, key_bias, q.shape[-1] ** -0.5)
                _check(got, q, k, v, b, key_bias)


ISAS = [name for name, _, _ in kernels.BUILDS]  # the builds, the most capable first


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_a_lesser_build_equals_float64(isa, tmp_path):
    """Built as for a CPU with less (its operators under another name) where this CPU has more: the AVX512 build
    without AVX512-BF16 or AMX (AMD Zen 4, Intel before Cooper Lake: bf16 rounded by af2cpu's own code, in 16 and in
    8 lanes) and the AVX2 build (AVX2-only machines), checked here too on every layer norm layout."""
    if BUILD is None or ISAS.index(isa) <= ISAS.index(BUILD):
        pytest.skip(f"the {isa} build is the one loaded here or needs more than this CPU has: the tests above run it")
    from torch.utils.cpp_extension import load

    load(name=f"af2cpu_attention_test_{isa}", sources=[str(kernels.SOURCE)], build_directory=str(tmp_path),
         extra_cflags=[*kernels.compiler_flags(isa), f"-DAF2CPU_OPS=af2cpu_test_{isa}"], is_python_module=False)
    ops = getattr(torch.ops, f"af2cpu_test_{isa}")
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v, b, key_bias = _operands(*shape, "shared", True, dtype)
            _check(ops.attention(q, k, v, b, key_bias, q.shape[-1] ** -0.5), q, k, v, b, key_bias)

    def layer_norm(x, scale, offset, eps):  # as kernels.layer_norm calls the operator
        return ops.layer_norm(kernels._rows_of_channels(x), scale, offset, eps).view(x.shape)

    for dtype in (torch.float32, torch.bfloat16):
        for c in elementwise_tests.CHANNELS:
            for layout in elementwise_tests.LAYOUTS:
                elementwise_tests.check(layer_norm, elementwise_tests._rows(c, layout, dtype))
        for positions in (15, 17):  # channel-first tiles and their tails
            planes = (torch.randn(37, 3 * positions) * 3 + 1).to(dtype)
            elementwise_tests.check(ops.layer_norm, planes[:, positions:2 * positions].t())
        block, mask = elementwise_tests._gate_operands(dtype, 37)
        elementwise_tests.check_gate(ops.gated, block[:2], block[2:], mask)
        act, update = block[:2].clone(), block[2:]
        ops.add_into(act, update)
        assert torch.equal(act, block[:2] + update)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_fully_masked_row_averages_the_values_as_pytorchs_kernel(dtype):
    """A batch element whose keys are all masked: every logit rounds to the mask's -1e9 in fp32, so its queries
    average the values, as PyTorch's kernel and AlphaFold2 in fp32 do."""
    q, k, v, bias, _ = _operands(2, 2, 9, 20, 32, 32, "shared", False, dtype)
    key_bias = torch.zeros(2, 20)
    key_bias[1] = MASK_BIAS
    got = kernels.attention(q, k, v, bias, key_bias, 32**-0.5)
    want = v[1].float().mean(dim=1, keepdim=True).expand(2, 9, 32)
    assert torch.allclose(got[1].float(), want, atol=1e-5 if dtype is torch.float32 else 1e-2)


@needs_build
def test_the_operators_refuse_operands_they_do_not_take():
    q, k, v, bias, _ = _operands(2, 2, 9, 20, 32, 32, "shared", False, torch.bfloat16)
    ops = [torch.ops.af2cpu.attention] + ([torch.ops.af2cpu.attention_amx] if BUILD == "amx" else [])
    for op in ops:
        with pytest.raises(RuntimeError, match="bias must broadcast"):
            op(q, k, v, bias.float(), None, 0.2)  # another dtype than q's
        with pytest.raises(RuntimeError, match="key_bias must be fp32 \\(batch, keys\\)"):
            op(q, k, v, bias, torch.zeros(2, 19), 0.2)
        with pytest.raises(RuntimeError, match="shapes disagree"):
            op(q, k[:, :, :5], v, bias, None, 0.2)
        # No keys: zeros (the kernels are not asked then: af2cpu.model.kernels.applies sends it to PyTorch's).
        empty = op(q, k[:, :, :0], v[:, :, :0], None, None, 0.2)
        assert empty.shape == (2, 2, 9, 32) and not empty.float().abs().any()


def test_the_build_follows_the_cpu_and_the_caps():
    amx = {"amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "avx2", "f16c"}
    assert kernels.build_isa(amx, {}) == "amx"
    assert kernels.build_isa(amx - {"amx_tile", "amx_bf16"}, {}) == "avx512"
    assert kernels.build_isa({"avx2", "fma", "f16c"}, {}) == "avx2"
    assert kernels.build_isa({"sse4_2", "avx"}, {}) is None
    assert kernels.build_isa(amx, {"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"
    assert kernels.build_isa(amx, {"ATEN_CPU_CAPABILITY": "avx512"}) == "amx"
    assert kernels.build_isa(amx, {"ATEN_CPU_CAPABILITY": "default"}) is None


@needs_build
def test_auto_takes_the_kernel_measured_faster_once_per_cpu_kind(fresh_decisions, monkeypatch, tmp_path):
    # A cache of its own: figures other tests measured and kept would be read instead of these.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []

    def measure(dtype, head_size):
        measured.append((dtype, head_size))
        return {"speedup": {8: 1.8, 16: 1.05, 32: 1.3}[head_size]}

    monkeypatch.setattr(kernels, "measure_speedup", measure)
    assert kernels.uses_kernel("auto", torch.float32, 8, 8)
    assert not kernels.uses_kernel("auto", torch.float32, 16, 16)  # below SPEEDUP_NEEDED
    assert kernels.uses_kernel("auto", torch.float32, 32, 32)
    assert not kernels.uses_kernel("pytorch", torch.float32, 8, 8)
    assert kernels.uses_kernel("af2cpu", torch.float32, 16, 16)
    assert not kernels.uses_kernel("af2cpu", torch.float32, 12, 12)  # a head size the kernels do not take
    assert measured == [("fp32", 8), ("fp32", 16), ("fp32", 32)]
    # Kept per kind of CPU: a new process (here: forgotten decisions) reads the figures instead of measuring.
    assert precision.kept_file(f"attention-fp32-8-{kernels.source_digest()}").exists()
    kernels.speedup.cache_clear()
    kernels.uses_kernel.cache_clear()
    assert kernels.uses_kernel("auto", torch.float32, 8, 8)
    assert len(measured) == 3
    with pytest.raises(ConfigError, match="runtime.attention='fastest'"):
        kernels.uses_kernel("fastest", torch.float32, 8, 8)


def test_without_a_build_auto_runs_pytorchs_kernel_and_af2cpu_says_why(fresh_decisions, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "attention.cpp"
    broken.write_text('#error "no compiler today"\n')
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "EXTENSION", "af2cpu_attention_broken_test")  # the real one's build stays
    monkeypatch.setattr(kernels, "_loaded", None)  # as in a process that has not loaded it
    with caplog.at_level(logging.WARNING, logger="af2cpu.model.kernels"):
        assert kernels.load() is None
    assert "PyTorch's attention kernel runs instead" in caplog.text and "attention.cpp did not build" in caplog.text
    assert "no compiler today" in caplog.text  # the compiler's own words
    assert not kernels.uses_kernel("auto", torch.float32, 32, 32)
    with pytest.raises(ConfigError, match="runtime.attention=af2cpu: .*attention.cpp did not build"):
        kernels.uses_kernel("af2cpu", torch.float32, 32, 32)
    assert not kernels.uses_elementwise("auto", torch.float32)
    with pytest.raises(ConfigError, match="runtime.elementwise=af2cpu: .*attention.cpp did not build"):
        kernels.uses_elementwise("af2cpu", torch.float32)
    # The network still runs, on PyTorch's kernels.
    attention = Attention(16, 16, 16, 2)
    norm = LayerNorm(16)
    norm.options = Options(elementwise="auto")
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        out = attention.self_attention(x, torch.ones(3, 5), options=Options(attention="auto"), norm=norm)
    assert out.shape == (3, 5, 16) and bool(torch.isfinite(out).all())


def test_a_build_lock_left_by_a_killed_build_is_removed(tmp_path, caplog):
    """torch waits for its build lock to go away: one left by a process killed while building (a job's time
    limit) would stop every later run of af2cpu on that kind of CPU."""
    lock = tmp_path / "lock"
    lock.touch()
    assert not kernels.clear_stale_lock(tmp_path)  # a build in progress: kept
    with caplog.at_level(logging.WARNING, logger="af2cpu.model.kernels"):
        assert kernels.clear_stale_lock(tmp_path, now=lock.stat().st_mtime + kernels.STALE_LOCK_SECONDS + 1)
    assert not lock.exists() and "did not finish" in caplog.text
    assert not kernels.clear_stale_lock(tmp_path)  # none left


def test_applies_only_where_the_kernel_takes_the_operands():
    q, k, v, bias, _ = _operands(2, 2, 9, 20, 32, 32, "shared", False, torch.float32)
    assert kernels.applies(q, k, v, bias) and kernels.applies(q, k, v, None)
    assert not kernels.applies(q, k, v, bias.transpose(-1, -2))  # keys not contiguous
    assert not kernels.applies(q, k, v, bias[..., :1])  # broadcast along the keys
    assert not kernels.applies(q.double(), k.double(), v.double(), None)
    assert not kernels.applies(q[..., :12], k[..., :12], v, None)  # head size 12
    assert not kernels.applies(q, k[:, :, :0], v[:, :, :0], None)  # no keys


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("transposed", [False, True], ids=["along rows", "along columns"])
def test_self_attention_with_af2cpus_kernel_equals_pytorchs(dtype, transposed):
    """Attention.self_attention as the Evoformer runs it (masked keys, a shared bias, blocks of rows, in place),
    with af2cpu's kernel and with PyTorch's."""
    gen = torch.Generator().manual_seed(3)
    attention = Attention(32, 32, 32, 4)
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[0] ** -0.5 if p.dim() > 1 else 0.1))
    x = torch.randn(10, 12, 32, generator=gen).to(dtype)
    mask = (torch.rand(10, 12, generator=gen) > 0.2).float()
    mask[3] = 0.0  # a row (column) fully masked
    mask[:, 5] = 0.0
    bias = torch.randn(4, 10 if transposed else 12, 10 if transposed else 12, generator=gen)
    outs = {}
    for kernel in ("pytorch", "af2cpu"):
        options = Options(attention=kernel, block_bytes=4096)  # a few rows (columns) a step
        with torch.no_grad():
            outs[kernel] = attention.self_attention(x, mask, bias, transposed=transposed, options=options,
                                                    add_to=x.clone())
    error = float((outs["af2cpu"].double() - outs["pytorch"].double()).abs().max() / outs["pytorch"].double().abs().max())
    assert error < (1e-5 if dtype is torch.float32 else 2e-2)  # measured 2.3e-7 (fp32), 7.8e-3 (bf16)
