"""Alternatives measured for the bf16 pass on AMX (docs/benchmarks.md, "bf16 on AMX").

Times each alternative of one kernel in the same process, interleaved round by round (a shared
machine's load hits all alike), and prints the best and median of the rounds with the error
against float64. Run from the repository root with the thread environment of `af2cpu bench`:

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/results-amx-2core/kernels.py

Kernels: the attention core at the Evoformer's three shapes (L=128, 64 MSA rows, head size 32),
PyTorch's flash kernel in bf16 and fp32 against the product-softmax-product path; the outer
product mean's contraction order; one Evoformer block eager against torch.compile.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from af2cpu.model.alphafold import _call_block
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.precision import interleaved_times


def report(kernel: str, times: dict, errors: dict, flop: float | None) -> list[dict]:
    rows = []
    for name, seconds in times.items():
        best = min(seconds)
        rows.append({"kernel": kernel, "variant": name, "best_ms": round(1e3 * best, 2),
                     "median_ms": round(1e3 * statistics.median(seconds), 2),
                     "gflops": round(flop / best / 1e9, 1) if flop else None, "error": errors.get(name)})
        print(rows[-1], flush=True)
    return rows


def relative(x: torch.Tensor, want: torch.Tensor) -> float:
    return float((x.double() - want).abs().max() / want.abs().max())


def attention() -> list[dict]:
    shapes = {"row attention (64 rows x 8 heads x 128²)": (64, 8, 128, 128, True),
              "column attention (128 columns x 8 heads x 64²)": (128, 8, 64, 64, False),
              "triangle attention (128 rows x 4 heads x 128²)": (128, 4, 128, 128, True)}
    return [row for kernel, shape in shapes.items() for row in attention_at(kernel, *shape)]


def attention_at(kernel: str, b: int, h: int, nq: int, nk: int, with_bias: bool) -> list[dict]:
    q, k, v = torch.randn(b, h, nq, 32), torch.randn(b, h, nk, 32), torch.randn(b, h, nk, 32)
    bias = torch.randn(1, h, nq, nk) if with_bias else None
    scale = 32**-0.5
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale,
                                          attn_mask=None if bias is None else bias.double())
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    bias_b = None if bias is None else bias.bfloat16()

    def products_softmax():  # bf16 products, fp32 softmax (the bias added in fp32)
        logits = torch.matmul(qb * scale, kb.transpose(-1, -2)).float()
        if bias_b is not None:
            logits += bias_b
        return torch.matmul(torch.softmax(logits, -1).bfloat16(), vb)

    candidates = {
        "flash bf16 (chosen)": lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias_b, scale=scale),
        "flash fp32 on fp32 inputs": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale),
        "flash fp32 on upcast bf16": lambda: F.scaled_dot_product_attention(
            qb.float(), kb.float(), vb.float(), attn_mask=None if bias_b is None else bias_b.float(),
            scale=scale).bfloat16(),
        "bf16 products + fp32 softmax": products_softmax,
    }
    errors = {name: relative(fn(), want) for name, fn in candidates.items()}
    return report(kernel, interleaved_times(candidates), errors, 4 * b * h * nq * nk * 32)


def outer_product_mean() -> list[dict]:
    """The outer-first order as model/evoformer.py runs it (a transposed copy of the outer products)
    against a layout that lets the GEMM read them transposed (batched, no copy)."""
    return [row for dtype in (torch.bfloat16, torch.float32) for row in outer_product_mean_in(dtype)]


def outer_product_mean_in(dtype: torch.dtype) -> list[dict]:
    n_seq, n_res, c, c_z = 64, 128, 32, 128
    left, right = torch.randn(n_seq, n_res, c).to(dtype), torch.randn(n_seq, n_res, c).to(dtype)
    w, b = (torch.randn(c * c, c_z) / c).to(dtype), torch.randn(c_z).to(dtype)
    step = max(1, (4 << 20) // (n_res * c * c * left.element_size()))

    def copy_then_gemm(left=left, right=right, w=w, b=b):
        out = left.new_empty((n_res, n_res, c_z))
        right_flat, left_t = right.reshape(n_seq, -1), left.permute(1, 2, 0)
        for s in range(0, n_res, step):
            outer = (left_t[s:s + step].reshape(-1, n_seq) @ right_flat).view(-1, c, n_res, c)
            torch.addmm(b, outer.transpose(1, 2).reshape(-1, c * c), w, out=out[s:s + step].view(-1, c_z))
        return out

    def transposed_operand(left=left, right=right, w=w, b=b):
        out = left.new_empty((n_res, n_res, c_z))
        right_t, left_t = right.permute(0, 2, 1).reshape(n_seq, -1), left.permute(1, 2, 0)
        for s in range(0, n_res, step):
            outer = (left_t[s:s + step].reshape(-1, n_seq) @ right_t).view(-1, c * c, n_res)
            torch.baddbmm(b, outer.transpose(1, 2), w.expand(outer.shape[0], -1, -1), out=out[s:s + step])
        return out

    want = copy_then_gemm(left.double(), right.double(), w.double(), b.double())
    candidates = {"transposed copy, then GEMM (chosen)": copy_then_gemm,
                  "GEMM on the transposed outer products": transposed_operand}
    errors = {name: relative(fn(), want) for name, fn in candidates.items()}
    return report(f"outer product mean {dtype}", interleaved_times(candidates), errors, None)


def evoformer_block() -> list[dict]:
    """One Evoformer block, eager (cache-blocked) against torch.compile (whole tensors, fused)."""
    arch = get_preset("model_1_ptm").architecture
    block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
    msa = torch.randn(64, 128, arch.evoformer.msa_channel).bfloat16()
    pair = torch.randn(128, 128, arch.pair_channel).bfloat16()
    masks = (torch.ones(64, 128), torch.ones(128, 128))
    compiled = torch.compile(_call_block, dynamic=True)

    def run(options, call):
        for module in block.modules():
            if hasattr(module, "options"):
                module.options = options
        with torch.no_grad():
            return call(block, msa, pair, *masks)

    eager, fused = Options(precision="bf16"), Options(precision="bf16", compile=True)
    start = time.perf_counter()
    run(fused, compiled)
    print(f"compilation and first call: {time.perf_counter() - start:.1f} s", flush=True)
    candidates = {"eager (chosen)": lambda: run(eager, _call_block), "torch.compile": lambda: run(fused, compiled)}
    return report("Evoformer block bf16, L=128, 64 rows", interleaved_times(candidates, rounds=5), {}, None)


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    torch.manual_seed(0)
    results = attention() + outer_product_mean() + evoformer_block()
    print(json.dumps(results, indent=1))
