"""PyTorch's fp32 attention kernel (flash) against products + softmax at the Evoformer's attention shapes
(head size 32), on the emulated AVX2 CPU presented as Intel and as AMD (docs/benchmarks.md, "MKL as on an
AMD CPU"): the kernel's own small products are its BLAS's (MKL), whose AMD path is slower.

    OMP_NUM_THREADS=2 scripts/avx2only/run .venv/bin/python benchmarks/avx2-only/attention_vendor.py
    AF2CPU_CPUID_VENDOR=amd OMP_NUM_THREADS=2 scripts/avx2only/run .venv/bin/python benchmarks/avx2-only/attention_vendor.py
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

from af2cpu.runtime.allocator import tune_allocator

# (batch, heads, queries, keys, a shared bias): triangle attention, MSA row attention, MSA column attention
SHAPES = ((32, 4, 128, 128, True), (16, 8, 128, 128, True), (32, 8, 64, 64, False))


def best_ms(fn, rounds: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def flash(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def products_softmax(q, k, v, bias):
    logits = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if bias is not None:
        logits.add_(bias)
    return torch.matmul(logits.softmax(-1), v)


if __name__ == "__main__":
    tune_allocator()
    torch.set_num_threads(2)
    for batch, heads, queries, keys, with_bias in SHAPES:
        q, k, v = (torch.randn(batch, heads, n, 32) for n in (queries, keys, keys))
        bias = torch.randn(1, heads, queries, keys) if with_bias else None
        gflop = 4 * batch * heads * queries * keys * 32 / 1e9
        row = {}
        for name, kernel in (("flash", flash), ("products + softmax", products_softmax)):
            ms = best_ms(functools.partial(kernel, q, k, v, bias))
            row[name] = f"{ms:.2f} ms, {gflop / ms * 1e3:.0f} GFLOP/s"
        print((batch, heads, queries, keys), row)
