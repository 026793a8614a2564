"""What a benchmark ran on, and the matrix-product peaks its results are set against."""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from af2cpu.config import Precision
from af2cpu.runtime.precision import bf16_speedup, native_bf16, resolve_precision
from af2cpu.runtime.products import onednn_available, onednn_linear
from af2cpu.runtime.threads import WAIT_VARIABLES
from af2cpu.runtime.topology import cpu_info


def machine_info(threads: int) -> dict:
    """Threads, usable CPUs, CPU model, ISA features, what precision=auto picks, the matrix kernels,
    the OpenMP wait variables, torch version and load average."""
    info = cpu_info()
    return {"threads": threads, "cpus": list(info.usable_cpus), "cpu": info.model_name,
            "isa": sorted(info.isa_flags), "native_bf16": native_bf16(), "bf16_speedup": bf16_speedup(),
            "precision_auto": str(resolve_precision(Precision.auto)), "kernels": kernel_info(),
            "openmp": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", *WAIT_VARIABLES)},
            "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]}


def kernel_info() -> dict[str, str | bool | None]:
    """The matrix kernels in use: torch's BLAS (MKL or OpenBLAS) and CPU capability (the widest vector ISA
    its kernels use), whether oneDNN (MKL-DNN) is built in and its version, numpy's BLAS."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    try:
        numpy_blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        numpy_blas = f"{numpy_blas['name']} {numpy_blas.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):  # numpy before 1.25 keeps no CONFIG
        numpy_blas = None
    return {"torch_blas": blas.group(1) if blas else None, "mkl": torch.backends.mkl.is_available(),
            "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "numpy_blas": numpy_blas,
            "bf16_matmul": onednn_bf16_matmul() if native_bf16() else None}


def onednn_bf16_matmul() -> str | None:
    """The oneDNN kernel torch's bf16 matrix product runs here, as oneDNN's verbose log names it
    (``brg_matmul:avx10_1_512_amx`` on AMX, ``brg_matmul:avx512_core_bf16`` on AVX512-BF16), or None
    when the product does not go through oneDNN. oneDNN writes the log to the process's stdout, so
    it is read from file descriptor 1 while one small product runs."""
    if not torch.backends.mkldnn.is_available():
        return None
    a = torch.ones(64, 64, dtype=torch.bfloat16)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                a @ a
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        found = re.search(rb",matmul,([\w:]+),", log.read())
    return found.group(1).decode() if found else None


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """Measured GFLOP/s of one square product with the current threads: fp32, and bf16 where the CPU
    multiplies bf16 natively (AVX512-BF16, AMX). Elsewhere bf16 is emulated (about 100x slower than fp32:
    minutes for this measurement) and its peak is None.

    fp32 is the better of PyTorch's ``torch.matmul`` (MKL) and oneDNN's linear kernel, the two libraries
    runtime.fp32_products picks between (``fp32_libraries`` has each): where MKL takes its slower path (an
    AMD CPU), oneDNN's products ran a pass above MKL's own peak, over 100 % of a peak measured with MKL alone."""
    peak: dict = {"fp32": None, "bf16": None}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if native_bf16() else [])
    for name, dtype in dtypes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        products = {"mkl": torch.matmul}
        if name == "fp32" and onednn_available():
            products["onednn"] = onednn_linear
        rates = {}
        for library, product in products.items():
            product(a, b)
            start = time.perf_counter()
            for _ in range(repeats):
                product(a, b)
            rates[library] = round(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9, 1)
        peak[name] = max(rates.values())
        if name == "fp32":
            peak["fp32_libraries"] = rates
    return peak


def turns_summary(times: dict[str, list[float]], unit: str = "ms") -> list[dict]:
    """Variants timed taking turns (``times``: each variant's seconds, round by round; the first is the
    baseline) as records: the best and median time in ``unit`` ("ms" or "s") and their ratios to the
    baseline's, the benchmarks' in-process A/B comparisons (benchmarks/*/ab.py)."""
    scale, digits = (1e3, 2) if unit == "ms" else (1.0, 4)
    first = next(iter(times.values()))
    return [{"variant": name, f"best_{unit}": round(scale * min(seconds), digits),
             f"median_{unit}": round(scale * statistics.median(seconds), digits),
             "speedup_best": round(min(first) / min(seconds), 3),
             "speedup_median": round(statistics.median(first) / statistics.median(seconds), 3)}
            for name, seconds in times.items()]
