"""af2cpu's own CPU attention and element-wise kernels, and where they replace PyTorch's (``runtime.attention``,
``runtime.elementwise``).

Every attention module of the network ends in softmax(q·kᵀ·scale + bias)·v, which PyTorch runs in its CPU
flash-attention kernel (``scaled_dot_product_attention``). At AlphaFold2's head sizes (8, 16, 32) that kernel
is bound by its softmax and, in fp32, by MKL's small products, which take slow paths on AMD CPUs.
model/csrc/attention.cpp has kernels of af2cpu's own (docs/benchmarks.md, "af2cpu's attention kernels" and
"Element-wise work and fused epilogues"):

- ``attention_amx`` (bf16, CPUs with AMX): both products on the matrix unit's tiles, the softmax on fp32
  logits in AVX512; measured 1.4-2.1x PyTorch's bf16 kernel at the Evoformer's shapes on a Xeon with AMX.
- ``attention`` (fp32 or bf16, AVX2 or AVX512): outer-product micro-kernels in fp32; measured 1.5-1.9x
  PyTorch's fp32 kernel at head sizes 8 and 16 on an AVX2 CPU presented as AMD, as fast or slower elsewhere.
- ``layer_norm`` (fp32 or bf16; rows of up to two strides with their channels contiguous, or channel-first
  activations): AlphaFold2's layer norm with fp32 statistics, each row read once and written once; measured
  1.4-2.2x PyTorch's in bf16 and 1.1-1.9x in fp32 on AMX, 1.1-1.2x and 0.9-1.6x on AVX2; on channel-first
  sums 1.9-3.4x a transposing copy and the row kernel.
- ``gated`` (fp32 or bf16): a gate, a * sigmoid(g) times a mask, in one pass; about 2x PyTorch's sigmoid and
  product. ``add_into``: the residual sums, the same numbers as PyTorch's, 2-3x as fast in bf16.

The source is compiled for this CPU on first use (``torch.utils.cpp_extension``: a C++ compiler and ninja,
about 10 s) into af2cpu's cache, one build per kind of CPU (:func:`af2cpu.runtime.precision.cpu_kind`: its
model, flags and caps, and torch's version), so nodes of other kinds sharing a home folder keep their own.
``auto`` (the default) measures af2cpu's kernel against PyTorch's once per kind of CPU, precision and head
size, at an MSA row attention's shape (a fraction of a second, kept in the user's cache beside the other
measured speed-ups), and takes af2cpu's from ``SPEEDUP_NEEDED`` up; where the source cannot be built, it runs
PyTorch's, with one warning. ``af2cpu`` asks for af2cpu's kernels wherever they apply (a ConfigError where
they cannot be built); ``pytorch`` never uses them. Compiled blocks (runtime.compile) run PyTorch's kernel,
which inductor knows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from af2cpu.config import AttentionKernel, cache_dir
from af2cpu.errors import ConfigError
from af2cpu.runtime.precision import (
    ATEN_CAP_VARIABLE,
    cpu_flags,
    cpu_kind,
    interleaved_times,
    measured_once,
    native_bf16,
)

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "attention.cpp"

# The builds, from the most capable, with the /proc/cpuinfo flags each needs and the compiler's flags.
_AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma")
BUILDS = (
    ("amx", frozenset({"amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}),
     (*_AVX512, "-mavx512bf16", "-mamx-tile", "-mamx-bf16")),
    ("avx512", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}), _AVX512),
    ("avx2", frozenset({"avx2", "fma", "f16c"}), ("-mavx2", "-mfma", "-mf16c")),
)
# ATEN_CPU_CAPABILITY (PyTorch's own cap on its kernels' ISA) caps these builds too.
_ATEN_CAPS = {"default": (), "avx2": ("avx2",), "avx512": ("avx512", "avx2")}

ALPHAFOLD_HEAD_SIZES = (8, 16, 32)  # of AlphaFold2's attention modules: what the choice is reported for
HEAD_SIZES = frozenset({8, 16, 24, 32, 48, 64})  # attention's
AMX_HEAD_SIZES = frozenset({8, 16, 32})  # attention_amx's

# auto takes af2cpu's kernel where it is at least this many times as fast as PyTorch's at the measured shape.
# Measured (docs/benchmarks.md): 1.4-2.1x on AMX in bf16; in fp32 0.9-1.3x on AVX512, 0.5-1.1x on AVX2 as an
# Intel CPU, 0.7-1.9x as an AMD one. The margin keeps PyTorch's kernel where af2cpu's would gain little beyond
# a busy machine's noise.
SPEEDUP_NEEDED = 1.1

# The measurement: an MSA row attention of this many rows and residues, the head counts of AlphaFold2's
# modules at each head size (8: the extra MSA's 8 heads; 16: the template stack's 4; 32: the Evoformer's 8),
# the two kernels taking turns, the best of each kept.
MEASURE_ROWS, MEASURE_LENGTH, MEASURE_ROUNDS = 16, 128, 5
MEASURE_HEADS = {8: 8, 16: 4, 24: 8, 32: 8, 48: 8, 64: 8}

EXTENSION = "af2cpu_attention"  # the extension's name, the build's appended

_unbuilt_reason: str | None = None
_loaded: str | None = None  # the build this process loaded: an extension's operators register once per process


def build_isa(flags=None, environ=os.environ) -> str | None:
    """The build of the kernels for a CPU with these /proc/cpuinfo ``flags`` (default: this one, oneDNN's
    ISA cap applied, so a cap that forbids AMX forbids it here too): "amx", "avx512" or "avx2", capped by
    ATEN_CPU_CAPABILITY in ``environ``; None below AVX2."""
    flags = frozenset(cpu_flags() if flags is None else flags)
    cap = environ.get(ATEN_CAP_VARIABLE, "").strip().lower()
    allowed = _ATEN_CAPS.get(cap)
    for name, needs, _ in BUILDS:
        if needs <= flags and (allowed is None or name in allowed or (name == "amx" and "avx512" in allowed)):
            return name
    return None


def loaded() -> str | None:
    """The build of the kernels this process has loaded (their operators exist), None before :func:`load`."""
    return _loaded


def unbuilt_reason() -> str | None:
    """Why this process has no build of the kernels (after :func:`load` returned None), else None."""
    return _unbuilt_reason


def compiler_flags(isa: str) -> list[str]:
    """The compiler's flags for the build ``isa`` ("amx", "avx512", "avx2")."""
    return ["-O3", "-fopenmp", *next(flags for name, _, flags in BUILDS if name == isa)]


@functools.lru_cache(maxsize=1)
def load() -> str | None:
    """Compile (once per kind of CPU) and load the kernels; the build loaded ("amx", "avx512", "avx2"), or
    None where none can be, with one warning saying why (the reason is kept for :func:`uses_kernel`'s
    errors)."""
    global _unbuilt_reason, _loaded
    if _loaded is not None:
        return _loaded
    isa = build_isa()
    if isa is None:
        _unbuilt_reason = "this CPU has no AVX2"
        return None
    from torch.utils.cpp_extension import load as load_extension  # deferred: imports setuptools (0.3 s)

    _ninja_on_path()

    build_dir = Path(cache_dir("kernels")) / f"attention-{isa}-{cpu_kind()}"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(build_dir)
        load_extension(name=f"{EXTENSION}_{isa}", sources=[str(SOURCE)],
                       extra_cflags=compiler_flags(isa), build_directory=str(build_dir),
                       is_python_module=False, verbose=False)
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "error:" in line), lines[-1] if lines else type(error).__name__)
        _unbuilt_reason = f"{SOURCE.name} did not build in {build_dir} ({detail})"
        log.warning("af2cpu's attention kernels are not available: %s; PyTorch's attention kernel runs instead. "
                    "Building them needs a C++ compiler (g++) and ninja.", _unbuilt_reason)
        return None
    _loaded = isa
    return isa


# A build takes about 10 s; torch's build lock older than this was left by a process killed while building.
STALE_LOCK_SECONDS = 600


def clear_stale_lock(build_dir: Path, now: float | None = None) -> bool:
    """Remove torch's build lock in ``build_dir`` where it is older than ``STALE_LOCK_SECONDS``: a process that
    was killed while building (a job's time limit) leaves it, and every later build would wait for it forever.
    Whether one was removed (with a warning)."""
    lock = build_dir / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    log.warning("removing %s, left %.0f s ago by a build of af2cpu's kernels that did not finish", lock, age)
    lock.unlink(missing_ok=True)
    return True


def _ninja_on_path() -> None:
    """torch.utils.cpp_extension runs ``ninja`` from PATH; the one pip installed with af2cpu lives in the
    environment's bin folder, which is not on PATH when its python is run by its path (.venv/bin/python)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # deferred: only to find its binary
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, os.environ.get("PATH")]))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              key_bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias + key_bias)·v by af2cpu's kernel (:func:`load` first): q (B, H, Q, c),
    k (B, H, K, c), v (B, H, K, c_v), any strides with the last axis contiguous; ``bias`` broadcastable to
    (B, H, Q, K) with the keys' axis whole and contiguous, in q's dtype; ``key_bias`` (B, K) fp32, keys
    contiguous. Returns (B, H, Q, c_v) whose memory is (B, Q, H, c_v), as PyTorch's CPU kernel returns it.
    bf16 on AMX runs on the tiles where the head sizes allow."""
    if (q.dtype is torch.bfloat16 and load() == "amx" and q.shape[-1] in AMX_HEAD_SIZES
            and v.shape[-1] in AMX_HEAD_SIZES):
        return torch.ops.af2cpu.attention_amx(q, k, v, bias, key_bias, scale)
    return torch.ops.af2cpu.attention(q, k, v, bias, key_bias, scale)


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether af2cpu's kernel takes these operands (:func:`attention`'s conditions); PyTorch's runs the rest."""
    if q.dtype not in (torch.float32, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        return False
    if q.dim() != 4 or q.shape[-1] not in HEAD_SIZES or v.shape[-1] not in HEAD_SIZES or k.shape[2] == 0:
        return False
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        return False
    if bias is None:
        return True
    return (bias.dim() == 4 and bias.dtype == q.dtype and bias.shape[-1] == k.shape[2] and bias.stride(-1) == 1
            and all(b in (1, n) for b, n in zip(bias.shape[:3], (q.shape[0], q.shape[1], q.shape[2]))))


def sample_operands(rows: int, heads: int, length: int, head_size: int, dtype: torch.dtype):
    """Random q, k, v as the attention modules pass them (strided views of one projection) and a shared bias
    (1, heads, length, length), for measurements."""
    proj = torch.randn(rows, length, 3 * heads * head_size).to(dtype)
    q, k, v = (t.view(rows, length, heads, head_size).transpose(1, 2) for t in proj.split(heads * head_size, -1))
    return q, k, v, torch.randn(1, heads, length, length).to(dtype)


def measure_speedup(dtype: str, head_size: int, rounds: int = MEASURE_ROUNDS) -> dict:
    """GFLOP/s of PyTorch's attention kernel and af2cpu's at an MSA row attention's shape in ``dtype``
    ("fp32" or "bf16") with heads of ``head_size``, with this process's threads, the two taking turns (a
    busy machine's load hits both alike), the best of ``rounds`` each; and their ratio."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    heads = MEASURE_HEADS[head_size]
    q, k, v, bias = sample_operands(MEASURE_ROWS, heads, MEASURE_LENGTH, head_size, torch_dtype)
    scale = head_size**-0.5
    calls = {"pytorch": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale),
             "af2cpu": lambda: attention(q, k, v, bias, None, scale)}
    with torch.no_grad():
        best = {name: min(seconds) for name, seconds in interleaved_times(calls, rounds).items()}
    flop = 4 * MEASURE_ROWS * heads * MEASURE_LENGTH**2 * head_size
    return {"pytorch_gflops": round(flop / best["pytorch"] / 1e9, 1), "af2cpu_gflops": round(flop / best["af2cpu"] / 1e9, 1),
            "speedup": round(best["pytorch"] / best["af2cpu"], 3), "build": load(),
            "shape": [MEASURE_ROWS, heads, MEASURE_LENGTH, head_size]}


@functools.cache
def speedup(dtype: str, head_size: int) -> float | None:
    """How many times faster af2cpu's attention kernel runs than PyTorch's on this CPU in ``dtype`` at
    ``head_size``, measured once per kind of CPU and version of the kernels (``attention-<dtype>-<head size>-*.json``
    in af2cpu's cache); None where the kernels cannot be built, or for bf16 where this CPU's bf16 is not native."""
    if load() is None or (dtype == "bf16" and not native_bf16()):
        return None
    return measured_once(f"attention-{dtype}-{head_size}-{source_digest()}",
                         f"af2cpu's {dtype} attention speed-up at head size {head_size}",
                         lambda: measure_speedup(dtype, head_size))


@functools.cache
def source_digest() -> str:
    """A digest of the kernels' source: their measured speed-ups are kept per version of it (an af2cpu that
    changes its kernels measures them again)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:8]


def as_kernel(value: AttentionKernel | str, setting: str = "attention") -> AttentionKernel:
    """``value`` as the kernel choice it names (of ``runtime.<setting>``); ConfigError for a name that is none."""
    return AttentionKernel.parse(value, f"runtime.{setting}={value!r}")


@functools.cache
def uses_kernel(requested: AttentionKernel | str, dtype: torch.dtype, head_size: int, value_size: int) -> bool:
    """Whether an attention in ``dtype`` with query/key heads of ``head_size`` and value heads of
    ``value_size`` runs af2cpu's kernel under ``runtime.attention=requested`` on this CPU: never for
    ``pytorch``; for ``af2cpu`` wherever the kernel takes the sizes (ConfigError where it cannot be built);
    for ``auto`` where it also was measured at least ``SPEEDUP_NEEDED`` times as fast as PyTorch's."""
    kernel = as_kernel(requested)
    if kernel is AttentionKernel.pytorch or dtype not in (torch.float32, torch.bfloat16):
        return False
    if head_size not in HEAD_SIZES or value_size not in HEAD_SIZES:
        return False
    if kernel is AttentionKernel.af2cpu:
        return _buildable("attention")
    measured = speedup("bf16" if dtype is torch.bfloat16 else "fp32", head_size)
    return measured is not None and measured >= SPEEDUP_NEEDED


def _buildable(setting: str) -> bool:
    """True where af2cpu's kernels are built; ``runtime.<setting>=af2cpu`` asked for them: a ConfigError elsewhere."""
    if load() is None:
        raise ConfigError(f"runtime.{setting}=af2cpu: af2cpu's kernels cannot run here: {unbuilt_reason()}; "
                          f"use runtime.{setting}=auto or pytorch")
    return True


# ---- The element-wise work: layer norms, gates, residual sums (runtime.elementwise) -----------------------------
# AlphaFold2's layer norms, over the channels of rows that are contiguous: fp32 statistics, the result in the
# input's dtype; its gates, a * sigmoid(g) (times a mask), in one pass; and the residual sums. PyTorch's CPU
# kernels ran bf16 layer norms with fp32 parameters at about a quarter of a copy's speed and bf16 sums at a
# third, and a gate takes two or three passes there. auto measures af2cpu's against PyTorch's once per kind of
# CPU and precision at the Evoformer's shapes (the layer norms of a block of MSA rows, 256 channels, and of pair
# rows, 128; a block of the triangle multiplication's gated projections; a block of pair rows' residual sum),
# and takes af2cpu's from SPEEDUP_NEEDED up.
LAYER_NORM_SHAPES = ((16, 128, 256), (32, 128, 128))
GATE_SHAPE = (256, 32 * 128)  # 2c channels x a block of 32 pair rows of 128 residues
SUM_SHAPE = (32, 128, 128)  # a block of pair rows


def layer_norm(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, eps: float) -> torch.Tensor:
    """af2cpu's layer norm of ``x`` (fp32 or bf16, laid out as :func:`layer_norm_applies` takes it) over its last
    dimension with fp32 ``scale`` and ``offset``: a new contiguous tensor of ``x``'s shape and dtype."""
    operand = _rows_of_channels(x)
    if operand is None:
        raise ValueError(f"af2cpu's layer norm does not take a {x.dtype} tensor of shape {tuple(x.shape)} and "
                         f"strides {x.stride()}")
    return torch.ops.af2cpu.layer_norm(operand, scale, offset, eps).view(x.shape)


def layer_norm_applies(x: torch.Tensor) -> bool:
    """Whether af2cpu's layer norm takes ``x`` as it is, without a copy: fp32 or bf16, and either its channels
    contiguous and its leading dimensions two groups of rows of one stride each (a block of rows or of columns
    of a representation), or channel-first activations viewed channel-last (each channel's positions one
    contiguous run: the triangle multiplication's sums, (c, rows, L), permuted)."""
    return _rows_of_channels(x) is not None


def _rows_of_channels(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as af2cpu's layer norm takes it: ``x`` itself where it is 3-D with contiguous channels or where it is
    channel-first, else a (B, N, c) view of its rows of c contiguous channels (:func:`as_rows3` keeping the channels
    apart, as add_into with a divisor views them); None where it is none of these."""
    if x.dtype not in (torch.float32, torch.bfloat16) or x.dim() == 0:
        return None
    if x.stride(-1) == 1 or x.shape[-1] == 1:
        if x.dim() == 3:
            return x
        views = as_rows3(x, channels_apart=True)
        return None if views is None else views[0]
    expected = 1  # channel-first: the positions, innermost first, one contiguous run
    for size, stride in reversed([(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]):
        if stride != expected:
            return None
        expected *= size
    return x


def gated(a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None,
          out: torch.Tensor | None = None, biases: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``a * sigmoid(g) * mask`` in one pass, computed in fp32 and rounded once: ``a`` and ``g`` of one shape and
    dtype (fp32 or bf16) with their last dimension contiguous, as 2-D (rows, M) or 3-D (B, N, M) tensors whose
    outer dimensions may have any strides; ``mask`` fp32, broadcast along that last dimension ((M,)), or None.
    ``biases``, for 3-D operands: fp32 (B,) tensors added to ``a`` and ``g`` first, ``(a + a_bias[b]) *
    sigmoid(g + g_bias[b])`` (the triangle multiplication's channel-first projections, a bias per channel).
    Written into ``out`` (the same shape and dtype, last dimension contiguous) or a new contiguous tensor;
    returned."""
    if out is None:
        out = torch.empty(a.shape, dtype=a.dtype)
    a_bias, g_bias = biases if biases is not None else (None, None)
    if a.dim() == 2:
        torch.ops.af2cpu.gated(a[None], g[None], mask, out[None], a_bias, g_bias)
    else:
        torch.ops.af2cpu.gated(a, g, mask, out, a_bias, g_bias)
    return out


def _stride_groups(shape: torch.Size, strides: list[tuple[int, ...]], dims: list[int]) -> list[tuple[int, list[int]]]:
    """Dimensions ``dims`` (outermost first) of tensors of one ``shape`` and these ``strides``, merged where every
    tensor's strides allow one stride for the two: (size, [stride of each tensor]) per group, innermost first."""
    groups: list[tuple[int, list[int]]] = []
    for i in reversed(dims):
        if groups:
            size, inner = groups[-1]
            if all(s[i] == stride * size for s, stride in zip(strides, inner)):
                groups[-1] = (shape[i] * size, inner)
                continue
        groups.append((shape[i], [s[i] for s in strides]))
    return groups


def as_rows3(*tensors: torch.Tensor, channels_apart: bool = False) -> list[torch.Tensor] | None:
    """Views (B, N, M) of tensors of one shape, their last dimension contiguous, grouping their dimensions the
    same way wherever each tensor's strides allow (a block of rows or of columns of a representation, and a
    contiguous update); None where three groups cannot hold them. With ``channels_apart`` the last dimension stays
    M (rows of channels: two groups hold the leading dimensions)."""
    shape = tensors[0].shape
    if len(shape) == 0 or any(t.shape != shape for t in tensors[1:]):
        return None
    if not channels_apart and all(t.is_contiguous() for t in tensors):
        return [t.view(1, 1, -1) for t in tensors]
    strides = [t.stride() for t in tensors]
    last = len(shape) - 1
    if channels_apart:  # the channels one group, the leading dimensions at most two
        if shape[last] > 1 and any(s[last] != 1 for s in strides):
            return None
        groups = [(shape[last], [s[last] for s in strides])]
        groups += _stride_groups(shape, strides, [i for i in range(last) if shape[i] != 1])
    else:
        dims = [i for i in range(last + 1) if shape[i] != 1] or [last]
        if shape[dims[-1]] > 1 and any(s[dims[-1]] != 1 for s in strides):
            return None
        groups = _stride_groups(shape, strides, dims)
    if len(groups) > 3:
        return None
    groups += [(1, [0] * len(tensors))] * (3 - len(groups))
    sizes = [size for size, _ in reversed(groups)]
    return [t.as_strided(sizes, [inner[k] for _, inner in reversed(groups)]) for k, t in enumerate(tensors)]


def add_into(act: torch.Tensor, update: torch.Tensor, divisor: torch.Tensor | None = None) -> bool:
    """``act += update`` (one shape and dtype, fp32 or bf16) by af2cpu's kernel: the same numbers as PyTorch's sum
    (fp32, rounded once), in one pass (PyTorch's bf16 sum ran at a third of a copy's speed; its fp32 sum at a
    copy's). False, and nothing done, where the two cannot be viewed as rows (:func:`as_rows3`). With ``divisor``
    (fp32, ``act``'s shape but its last dimension 1 or absent: one count per row of channels), ``act += update /
    divisor``, the quotient rounded to ``act``'s dtype first: bit for bit ``act.add_(update.div_(divisor))``
    without PyTorch's fp32 copies of a bf16 update (``update`` is left as it was); False, and nothing done, where
    ``act`` or ``update`` cannot be viewed as rows of their channels."""
    if act.dtype not in (torch.float32, torch.bfloat16) or update.dtype != act.dtype:
        return False
    if divisor is not None:
        if (act.dim() == 0 or update.shape != act.shape or divisor.dtype != torch.float32
                or divisor.numel() * act.shape[-1] != act.numel()):
            return False
        views = as_rows3(act, update, channels_apart=True)  # (B, N, c) views of rows of channels
        if views is None:
            return False
        torch.ops.af2cpu.add_into(*views, divisor.reshape(views[0].shape[:2]).contiguous())
        return True
    views = as_rows3(act, update)
    if views is None:
        return False
    torch.ops.af2cpu.add_into(*views)
    return True


def measure_elementwise_speedup(dtype: str, rounds: int = MEASURE_ROUNDS) -> dict:
    """Seconds of PyTorch's layer norms, gate and residual sum and af2cpu's at ``LAYER_NORM_SHAPES``,
    ``GATE_SHAPE`` and ``SUM_SHAPE`` in ``dtype`` ("fp32" or "bf16"), with this process's threads, the two taking
    turns, the best of ``rounds`` each; the ratio of each kind and of their sums (fp32's without the sum, which
    stays PyTorch's: it runs at a copy's speed there)."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    norms = [(torch.randn(shape).to(torch_dtype), torch.randn(shape[-1]), torch.randn(shape[-1]))
             for shape in LAYER_NORM_SHAPES]
    a, g = torch.randn(2, *GATE_SHAPE).to(torch_dtype)
    out = torch.empty_like(a)
    act, update = (0.01 * torch.randn(2, *SUM_SHAPE)).to(torch_dtype)
    calls = {"pytorch layer norms": lambda: [F.layer_norm(x, x.shape[-1:], s, o, 1e-5) for x, s, o in norms],
             "af2cpu layer norms": lambda: [layer_norm(x, s, o, 1e-5) for x, s, o in norms],
             "pytorch gate": lambda: torch.mul(a, torch.sigmoid(g), out=out),
             "af2cpu gate": lambda: gated(a, g, None, out),
             "pytorch sum": lambda: act.add_(update),
             "af2cpu sum": lambda: add_into(act, update)}
    with torch.no_grad():
        best = {name: min(seconds) for name, seconds in interleaved_times(calls, rounds).items()}
    kinds = ("layer norms", "gate", "sum") if dtype == "bf16" else ("layer norms", "gate")  # fp32 sums: PyTorch's
    pytorch, ours = (sum(best[f"{who} {kind}"] for kind in kinds) for who in ("pytorch", "af2cpu"))
    return {**{kind.replace(" ", "_"): round(best[f"pytorch {kind}"] / best[f"af2cpu {kind}"], 3)
               for kind in ("layer norms", "gate", "sum")},
            "pytorch_ms": round(1e3 * pytorch, 3), "af2cpu_ms": round(1e3 * ours, 3),
            "speedup": round(pytorch / ours, 3), "build": load(),
            "shapes": [list(shape) for shape in (*LAYER_NORM_SHAPES, GATE_SHAPE, SUM_SHAPE)]}


@functools.cache
def elementwise_speedup(dtype: str) -> float | None:
    """How many times faster af2cpu's layer norms, gates and (bf16) sums run than PyTorch's on this CPU in
    ``dtype``, measured once per kind of CPU and version of the kernels (``elementwise-<dtype>-*.json`` in af2cpu's
    cache); None where the kernels cannot be built, or for bf16 where this CPU's bf16 is not native."""
    if load() is None or (dtype == "bf16" and not native_bf16()):
        return None
    return measured_once(f"elementwise-{dtype}-{source_digest()}", f"af2cpu's {dtype} element-wise speed-up",
                         lambda: measure_elementwise_speedup(dtype))


@functools.cache
def uses_elementwise(requested: AttentionKernel | str, dtype: torch.dtype) -> bool:
    """Whether the layer norms, gates and (bf16) residual sums in ``dtype`` run af2cpu's kernels under
    ``runtime.elementwise=requested`` on this CPU: never for ``pytorch``; for ``af2cpu`` always (ConfigError where
    they cannot be built); for ``auto`` where they were measured at least ``SPEEDUP_NEEDED`` times as fast as
    PyTorch's."""
    kernel = as_kernel(requested, "elementwise")
    if kernel is AttentionKernel.pytorch or dtype not in (torch.float32, torch.bfloat16):
        return False
    if kernel is AttentionKernel.af2cpu:
        return _buildable("elementwise")
    measured = elementwise_speedup("bf16" if dtype is torch.bfloat16 else "fp32")
    return measured is not None and measured >= SPEEDUP_NEEDED
