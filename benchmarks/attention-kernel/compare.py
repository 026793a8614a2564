"""af2cpu's attention kernels (model/csrc/attention.cpp) against PyTorch's, at AlphaFold2's attention shapes.

Run from the repository root (docs/benchmarks.md, "af2cpu's attention kernels"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/attention-kernel/compare.py
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/attention-kernel/compare.py --split

and as an AVX2-only CPU, as Intel and as AMD (MKL's AMD path, which PyTorch's kernel calls):

    scripts/avx2only/run python benchmarks/attention-kernel/compare.py
    AF2CPU_CPUID_VENDOR=amd scripts/avx2only/run python benchmarks/attention-kernel/compare.py

The kernels are built as af2cpu.model.kernels builds them for this CPU (AMX, AVX512 or AVX2). Each shape's
kernels run in one process, taking turns round by round (best and median of 9 rounds), after af2cpu's
allocator settings, as `af2cpu bench` runs: PyTorch's, af2cpu's portable kernel (``attention``) and, in bf16
on AMX, its tile kernel (``attention_amx``). The error is the largest absolute difference from the float64
result. bf16 runs only where bf16 is native (on AVX2 af2cpu runs fp32). ``--split`` prints, per thread, the
kernels' cycles in each phase (rdtsc; a build with -DAF2CPU_PROFILE) at two shapes instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load

from af2cpu.model import kernels
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.precision import interleaved_times, native_bf16

# (what, batch, heads, queries = keys, head size, with a shared (1, H, Q, K) bias)
SHAPES = [
    ("MSA row attention, 64 rows", 64, 8, 128, 32, True),
    ("MSA column attention, 128 columns", 128, 8, 64, 32, False),
    ("triangle attention, 128 rows", 128, 4, 128, 32, True),
    ("extra-MSA row attention, 256 rows", 256, 8, 128, 8, True),
    ("template triangle attention, 128 rows", 128, 4, 128, 16, True),
    ("deep MSA column attention, 146 columns x 508 rows", 146, 8, 508, 32, False),
]


def build_profiled() -> None:
    """The kernels with their phase counters, under the operators' namespace af2cpu_profile."""
    isa = kernels.build_isa()
    load(name=f"af2cpu_attention_profile_{isa}", sources=[str(kernels.SOURCE)], is_python_module=False,
         extra_cflags=[*kernels.compiler_flags(isa), "-DAF2CPU_PROFILE", "-DAF2CPU_OPS=af2cpu_profile"])


def inputs(b: int, h: int, n: int, d: int, with_bias: bool, dtype: torch.dtype):
    """q, k, v as af2cpu's attention reads them (strided views of one projection), and a bias or None."""
    q, k, v, bias = kernels.sample_operands(b, h, n, d, dtype)
    return q, k, v, bias if with_bias else None


def compare(what: str, b: int, h: int, n: int, d: int, with_bias: bool, dtype: torch.dtype) -> None:
    q, k, v, bias = inputs(b, h, n, d, with_bias, dtype)
    scale = d**-0.5
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale,
                                          attn_mask=None if bias is None else bias.double())
    candidates = {
        "PyTorch (scaled_dot_product_attention)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                                                         scale=scale),
        "af2cpu (attention)": lambda: torch.ops.af2cpu.attention(q, k, v, bias, None, scale),
    }
    if dtype is torch.bfloat16 and kernels.load() == "amx" and d in kernels.AMX_HEAD_SIZES:
        candidates["af2cpu (attention_amx)"] = lambda: torch.ops.af2cpu.attention_amx(q, k, v, bias, None, scale)
    errors = {name: float((fn().double() - want).abs().max()) for name, fn in candidates.items()}
    flop = 4 * b * h * n * n * d
    times = interleaved_times(candidates)
    best = {name: min(seconds) for name, seconds in times.items()}
    for name, seconds in times.items():
        print(json.dumps({"shape": what, "dtype": str(dtype).removeprefix("torch."), "head size": d, "kernel": name,
                          "best_ms": round(1e3 * best[name], 2), "median_ms": round(1e3 * statistics.median(seconds), 2),
                          "gflops": round(flop / best[name] / 1e9, 1), "error": errors[name],
                          "speed-up over PyTorch": round(best[next(iter(best))] / best[name], 2)}), flush=True)


def split(what: str, b: int, h: int, n: int, d: int, with_bias: bool) -> None:
    for dtype in (torch.float32, torch.bfloat16) if native_bf16() else (torch.float32,):
        q, k, v, bias = inputs(b, h, n, d, with_bias, dtype)
        ops = [torch.ops.af2cpu_profile.attention]
        if dtype is torch.bfloat16 and kernels.load() == "amx" and d in kernels.AMX_HEAD_SIZES:
            ops.append(torch.ops.af2cpu_profile.attention_amx)
        for op in ops:
            for _ in range(3):
                op(q, k, v, bias, None, d**-0.5)
            print(json.dumps({"shape": what, "dtype": str(dtype).removeprefix("torch."), "head size": d,
                              "kernel": str(op).rsplit(".", 1)[-1], "logits per thread (M)": b * h * n * n / 2e6,
                              "cycles per thread (M), by phase": "each thread's line below"}), flush=True)
            os.environ["AF2CPU_PROFILE"] = "1"
            op(q, k, v, bias, None, d**-0.5)
            del os.environ["AF2CPU_PROFILE"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", action="store_true", help="cycles per phase instead of the comparison")
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    isa = kernels.load()
    if isa is None:
        raise SystemExit("af2cpu's attention kernels did not build here (see the warning above)")
    if args.split:
        build_profiled()
    print("build:", isa, "vendor:", os.environ.get("AF2CPU_CPUID_VENDOR", "as the CPU says"), flush=True)
    if args.split:
        split(*SHAPES[0])
        split(*SHAPES[3])
    else:
        for dtype in (torch.float32, torch.bfloat16) if native_bf16() else (torch.float32,):
            for shape in SHAPES:
                compare(*shape, dtype)
