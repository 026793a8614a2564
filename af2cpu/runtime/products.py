"""The one decision of which library runs the network's fp32 matrix products (``runtime.fp32_products``).

PyTorch multiplies fp32 matrices with MKL, which picks its kernels by the CPU's vendor: on AMD CPUs it
takes slower paths. The issue that asked for this measured MKL's fp32 GEMM 17-23 % below OpenBLAS and
XLA on an AVX2-only AMD EPYC; an Intel Xeon presented to every library as an AVX2-only AMD EPYC 7003
(scripts/avx2only/run with AF2CPU_CPUID_VENDOR=amd) ran the Evoformer's products 21-44 % slower with
MKL than with oneDNN, whose kernels are picked by ISA, and an Evoformer block 13 % slower; as an Intel
CPU the two libraries were within 2 % in a block (docs/benchmarks.md, "fp32 products: MKL or oneDNN").

PyTorch reaches oneDNN for fp32 through its linear kernel (``torch.ops.mkldnn._linear_pointwise``),
which af2cpu.model.primitives.matmul calls for the layers' products when the network's
Options.fp32_products is oneDNN. ``auto`` (the default) measures both libraries once per kind of CPU at
the shapes of the Evoformer's cache-blocked products (:func:`onednn_speedup`, a fraction of a second,
kept in the user's cache beside the bf16 speed-up) and takes oneDNN from ``ONEDNN_SPEEDUP_NEEDED`` up.
bf16 products go to oneDNN in PyTorch anyway: the choice is fp32's.
"""

from __future__ import annotations

import functools
import math
import time

from af2cpu.config import Fp32Products
from af2cpu.errors import ConfigError
from af2cpu.runtime.precision import measured_once

# auto takes oneDNN where its products are at least this many times as fast as MKL's at the measured shapes.
# Measured (docs/benchmarks.md): 1.25-1.26x where MKL sees an AMD CPU (a block 13 % faster, a pass 8 %, through
# oneDNN); 0.98-1.01x on an Intel Xeon and 1.05x on it kept to AVX2, where a block ran the same through either.
# The margin keeps PyTorch's own choice where oneDNN would gain nothing a block shows.
ONEDNN_SPEEDUP_NEEDED = 1.15

# The measurement: (rows, in, out) products as the Evoformer's cache-blocked loops run them (a transition's
# two layers, 2048 rows: a 4 MiB block), the libraries taking turns, the best of each kept.
SHAPES = ((2048, 256, 1024), (2048, 1024, 256))
ROUNDS = 5


def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's fp32 linear kernel (every x86 CPU build does)."""
    import torch  # deferred: torch only where products are decided

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=1)
def onednn_bf16_available() -> bool:
    """Whether oneDNN's linear kernel takes bf16 here: native bf16 units (AVX512-BF16, AMX) that oneDNN's ISA
    cap (ONEDNN_MAX_CPU_ISA) leaves it; elsewhere it cannot build a bf16 kernel at all."""
    import torch  # deferred: torch only where products are decided

    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onednn_linear(x, w, b=None, activation: str | None = None, multiply=None):
    """``activation(x @ w + b)`` for fp32 or bf16 ``x`` (N, k), ``w`` (k, n), ``b`` (n,) or None, by oneDNN's
    linear kernel, which PyTorch reaches through its mkldnn ops (the network's products:
    af2cpu.model.primitives.matmul). The bias and ``activation`` ("relu", "sigmoid" or None) are applied to
    the fp32 sums as the kernel writes them: no pass of their own. ``multiply``, a contiguous (N, n) tensor of
    ``x``'s dtype (with no activation), is multiplied into them the same way: ``(x @ w + b) * multiply``."""
    import torch  # deferred: this module decides without torch; the call is made where the network runs

    if multiply is not None:
        if activation is not None:
            raise ValueError("onednn_linear: an activation and a product with another tensor are not fused together")
        return torch.ops.mkldnn._linear_pointwise.binary(x, multiply, w.t(), b, "mul")
    return torch.ops.mkldnn._linear_pointwise(x, w.t(), b, activation or "none", [], "")


def measure_onednn_speedup(shapes=SHAPES, rounds: int = ROUNDS) -> dict[str, float]:
    """GFLOP/s of fp32 products of ``shapes`` through MKL (``torch.addmm``) and oneDNN (its linear kernel),
    with this process's threads, the two taking turns (a busy machine's load hits both alike), the best of
    ``rounds`` each summed over the shapes; and their ratio."""
    import torch  # deferred: only when the measurement is due

    best = {"mkl": [math.inf] * len(shapes), "onednn": [math.inf] * len(shapes)}
    operands = [(torch.randn(m, k), torch.randn(k, n), torch.randn(n)) for m, k, n in shapes]
    calls = {"mkl": lambda x, w, b: torch.addmm(b, x, w), "onednn": onednn_linear}
    with torch.no_grad():
        for call in calls.values():
            for x, w, b in operands:
                call(x, w, b)  # warm-up: oneDNN builds its kernel at the first call
        for _ in range(rounds):
            for name, call in calls.items():
                for i, (x, w, b) in enumerate(operands):
                    start = time.perf_counter()
                    call(x, w, b)
                    best[name][i] = min(best[name][i], time.perf_counter() - start)
    flop = sum(2 * m * k * n for m, k, n in shapes)
    mkl, onednn = sum(best["mkl"]), sum(best["onednn"])
    return {"mkl_gflops": round(flop / mkl / 1e9, 1), "onednn_gflops": round(flop / onednn / 1e9, 1),
            "speedup": round(mkl / onednn, 3), "shapes": [list(shape) for shape in shapes]}


@functools.lru_cache(maxsize=1)
def onednn_speedup() -> float | None:
    """How many times faster oneDNN multiplies fp32 matrices than MKL on this CPU (None without oneDNN's
    kernel), measured once per CPU kind and kept (``fp32-onednn-speedup-*.json`` in af2cpu's cache)."""
    if not onednn_available():
        return None
    return measured_once("fp32-onednn-speedup", "oneDNN's fp32 speed-up over MKL", measure_onednn_speedup)


def as_products(value: Fp32Products | str) -> Fp32Products:
    """``value`` as the library it names (auto unresolved); ConfigError for a name that is no library."""
    return Fp32Products.parse(value, f"runtime.fp32_products={value!r}")


def resolve_products(requested: Fp32Products | str, speedup: float | None = None) -> Fp32Products:
    """The library ``requested`` means on this CPU: mkl or onednn. ``auto`` is oneDNN where it was measured
    at least ``ONEDNN_SPEEDUP_NEEDED`` times as fast as MKL (``speedup``, default :func:`onednn_speedup`),
    MKL elsewhere; ``onednn`` without oneDNN's kernel is a ConfigError, as is a name that is no library."""
    products = as_products(requested)
    if products is Fp32Products.mkl:
        return products
    if products is Fp32Products.onednn:
        if not onednn_available():
            raise ConfigError("runtime.fp32_products=onednn: this PyTorch has no oneDNN linear kernel; "
                              "use runtime.fp32_products=mkl")
        return products
    if speedup is None:
        speedup = onednn_speedup()
    return Fp32Products.onednn if speedup is not None and speedup >= ONEDNN_SPEEDUP_NEEDED else Fp32Products.mkl
