"""fp32 attention core at the Evoformer's shapes: PyTorch's flash kernel against products + softmax.

Run from the repository root (docs/benchmarks.md, "fp32 attention by ISA"):

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/attention-fp32-isa/attention.py

and with PyTorch, MKL and oneDNN capped to AVX2 on an AVX512 machine:

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 \
        OMP_WAIT_POLICY=PASSIVE python benchmarks/attention-fp32-isa/attention.py

Each shape's variants run in one process, interleaved round by round (a shared machine's load hits
all alike); the best and median of 9 rounds, and the error against float64.
"""

from __future__ import annotations

import json
import statistics

import torch
import torch.nn.functional as F

from af2cpu.runtime.precision import interleaved_times


def attention_at(kernel: str, b: int, h: int, nq: int, nk: int, with_bias: bool, d: int = 32) -> None:
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, d)
    bias = torch.randn(1, h, nq, nk) if with_bias else None
    scale = d**-0.5
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale,
                                          attn_mask=None if bias is None else bias.double())
    q_scaled = q * scale

    def products_softmax():  # whole logits
        logits = torch.matmul(q_scaled, k.transpose(-1, -2))
        if bias is not None:
            logits += bias
        return torch.matmul(torch.softmax(logits, -1), v)

    def products_softmax_blocked():  # logits of about 1 MiB at a time
        out = torch.empty_like(q)
        step = max(1, (1 << 20) // (h * nq * nk * 4))
        for s in range(0, b, step):
            logits = torch.matmul(q_scaled[s:s + step], k[s:s + step].transpose(-1, -2))
            if bias is not None:
                logits += bias
            torch.matmul(torch.softmax(logits, -1), v[s:s + step], out=out[s:s + step])
        return out

    candidates = {"flash (chosen)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale),
                  "products + softmax": products_softmax,
                  "products + softmax, cache-blocked": products_softmax_blocked}
    errors = {name: float((fn().double() - want).abs().max() / want.abs().max()) for name, fn in candidates.items()}
    flop = 4 * b * h * nq * nk * d
    for name, seconds in interleaved_times(candidates).items():
        print(json.dumps({"kernel": kernel, "variant": name, "best_ms": round(1e3 * min(seconds), 2),
                          "median_ms": round(1e3 * statistics.median(seconds), 2),
                          "gflops": round(flop / min(seconds) / 1e9, 1), "error": errors[name]}), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print("CPU capability:", torch.backends.cpu.get_cpu_capability(), flush=True)
    attention_at("row attention, 64 rows x 8 heads x 128², bias", 64, 8, 128, 128, True)
    attention_at("column attention, 128 columns x 8 heads x 64²", 128, 8, 64, 64, False)
    attention_at("triangle attention, 128 rows x 4 heads x 128², bias", 128, 4, 128, 128, True)
    attention_at("deep column attention, 146 columns x 8 heads x 508²", 146, 8, 508, 508, False)
