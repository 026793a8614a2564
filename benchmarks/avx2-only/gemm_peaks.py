"""fp32 GEMM speed of each library af2cpu and the reference use, and PyTorch's bf16 one, as this process sees
the CPU: run natively and under scripts/avx2only/run to check that every library is kept to AVX2.

    OMP_NUM_THREADS=2 python benchmarks/avx2-only/gemm_peaks.py
    OMP_NUM_THREADS=2 scripts/avx2only/run .venv/bin/python benchmarks/avx2-only/gemm_peaks.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def gflops(product, n, reps):
    product()  # warm-up (and XLA's compilation)
    start = time.perf_counter()
    for _ in range(reps):
        product()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def main():
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = np.random.default_rng(0).random((n, n), dtype=np.float32)
    jx = jnp.asarray(x)
    jit_product = jax.jit(lambda p, q: p @ q)
    small = 512  # bf16 is emulated on AVX2 (a few GFLOP/s): a small product keeps it short
    ab, bb = torch.randn(small, small).bfloat16(), torch.randn(small, small).bfloat16()
    print(f"PyTorch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"fp32 {n}² PyTorch (MKL): {gflops(lambda: a @ b, n, 8):.0f} GFLOP/s")
    print(f"fp32 {n}² NumPy (OpenBLAS): {gflops(lambda: x @ x, n, 8):.0f} GFLOP/s")
    print(f"fp32 {n}² JAX (XLA): {gflops(lambda: jit_product(jx, jx).block_until_ready(), n, 8):.0f} GFLOP/s")
    print(f"bf16 {small}² PyTorch (oneDNN): {gflops(lambda: ab @ bb, small, 2):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
