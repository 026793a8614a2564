"""fp32 matrix products through MKL (torch's BLAS, what af2cpu runs) against oneDNN (reached from torch
through its fused-linear op), at the Evoformer's shapes (L=128, 64 MSA rows) and inside one Evoformer
block (docs/benchmarks.md, "fp32 products: MKL or oneDNN"). Alternatives take turns, best of the rounds.

    OMP_NUM_THREADS=2 python benchmarks/gemm-fp32-onednn/gemm.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 python ...

In the block, every out-of-place bias product whose weight has at least as many rows as columns (the
contractions: attention projections and outputs, the transitions' second layers, the outer product
mean's output) goes to oneDNN; products written into given outputs stay MKL's.
"""

from __future__ import annotations

import json
import sys

import torch

from af2cpu.model.alphafold import _call_block_in_place
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.precision import interleaved_times

onednn_linear = torch.ops.mkldnn._linear_pointwise


def isolated() -> list[dict]:
    rows = []
    # (tokens, in, out): expansions (transition's first layer, triangle projections) and contractions.
    for m, k, n in [(8192, 256, 1024), (8192, 1024, 256), (16384, 128, 512), (16384, 512, 128),
                    (16384, 128, 128), (8192, 256, 256), (16384, 1024, 128)]:
        x, w, b = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        w_t = w.t().contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(w_t, m)
        want = torch.addmm(b.double(), x.double(), w.double())
        # Fresh outputs for all (the model's allocator reuses freed blocks: tune_allocator).
        candidates = {"mkl": lambda x=x, w=w, b=b: torch.addmm(b, x, w),
                      "onednn": lambda x=x, w_t=w_t, b=b: onednn_linear(x, w_t, b, "none", [], ""),
                      "onednn_packed": lambda x=x, p=packed, b=b: onednn_linear(x, p, b, "none", [], "")}
        errors = {name: float((fn() - want).abs().max() / want.abs().max()) for name, fn in candidates.items()}
        times = interleaved_times(candidates, rounds=9)
        row = {"shape": f"{m}x{k}x{n}"}
        for name, seconds in times.items():
            row[name] = round(2 * m * k * n / min(seconds) / 1e9, 1)
            row[f"{name}_error"] = f"{errors[name]:.1e}"
        print(row, flush=True)
        rows.append(row)
    return rows


def in_block() -> dict:
    arch = get_preset("model_1_ptm").architecture
    block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
    options = Options(precision="fp32")
    for module in block.modules():
        if hasattr(module, "options"):
            module.options = options
    msa, pair = torch.randn(64, 128, arch.evoformer.msa_channel), torch.randn(128, 128, arch.pair_channel)
    masks = (torch.ones(64, 128), torch.ones(128, 128))
    mkl_addmm, route = torch.addmm, {"onednn": False}

    def addmm(bias, x, w, *, out=None, **kwargs):
        if (route["onednn"] and out is None and not kwargs and x.dim() == w.dim() == 2 and bias.dim() == 1
                and w.shape[0] >= w.shape[1] and x.is_contiguous()):
            return onednn_linear(x, w.t(), bias, "none", [], "")
        return mkl_addmm(bias, x, w, out=out, **kwargs)

    def run(onednn):
        def call():
            route["onednn"] = onednn
            with torch.no_grad():
                return _call_block_in_place(block, msa.clone(), pair.clone(), *masks)
        return call

    torch.addmm = addmm
    try:
        difference = float((run(False)()[1] - run(True)()[1]).abs().max())
        times = interleaved_times({"mkl": run(False), "onednn contractions": run(True)}, rounds=9)
    finally:
        torch.addmm = mkl_addmm
    result = {name: {"best_ms": round(1e3 * min(s), 1), "median_ms": round(1e3 * sorted(s)[len(s) // 2], 1)}
              for name, s in times.items()}
    result["max_difference"] = f"{difference:.1e}"
    print(result, flush=True)
    return result


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    torch.manual_seed(0)
    tune_allocator()
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "isolated": isolated(),
                      "block": in_block()}, indent=1))
