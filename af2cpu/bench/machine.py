"""What a benchmark ran on, and the matrix-product peaks its results are set against."""

from __future__ import annotations

import os
import time

import torch

from af2cpu.runtime.topology import cpu_info


def machine_info(threads: int) -> dict:
    """Threads, usable CPUs, CPU model, ISA features, torch version and load average."""
    info = cpu_info()
    return {"threads": threads, "cpus": list(info.usable_cpus), "cpu": info.model_name,
            "isa": sorted(info.isa_flags), "native_bf16": info.has_bf16, "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict[str, float | None]:
    """Measured GFLOP/s of one square ``torch.matmul`` with the current threads: fp32, and bf16 where
    the CPU multiplies bf16 natively (AVX512-BF16, AMX). Elsewhere bf16 is emulated (about 100x slower
    than fp32: minutes for this measurement) and its peak is None."""
    peak: dict[str, float | None] = {"fp32": None, "bf16": None}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu_info().has_bf16 else [])
    for name, dtype in dtypes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        peak[name] = round(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9, 1)
    return peak
