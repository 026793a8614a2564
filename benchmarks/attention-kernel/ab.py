"""Whole passes with PyTorch's attention kernel and af2cpu's taking turns on one model (runtime.attention).

Run from the repository root (docs/benchmarks.md, "af2cpu's attention kernels"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/attention-kernel/ab.py --precision bf16
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/attention-kernel/ab.py --precision fp32
    AF2CPU_CPUID_VENDOR=amd scripts/avx2only/run python benchmarks/attention-kernel/ab.py --precision fp32

The `af2cpu bench` model and inputs (random official-format parameters, 48 Evoformer blocks, a random query of
--length residues, 64 MSA and 256 extra rows, the four masked template slots), the options `af2cpu predict`
plans for them; one warm-up pass each, then --passes passes each, the two kernels taking turns pass by pass;
the best and mean of each, and the largest difference between their predicted positions (Å).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from af2cpu.bench.model import bench_inputs, options
from af2cpu.model import kernels
from af2cpu.runtime.allocator import tune_allocator

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=48)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(2)
    bench_args = argparse.Namespace(msa_rows=64, extra_rows=256, blocks=args.blocks, chains=1, default_msa_sizes=False)
    model, _, features, shape = bench_inputs(args.length, bench_args)
    planned = options(args.precision, shape, preset=model.preset)
    print(json.dumps({"build": kernels.load(), "precision": args.precision, "length": args.length,
                      "af2cpu kernel where auto": {d: kernels.uses_kernel("auto", planned.dtype, d, d) for d in (8, 16, 32)}}),
          flush=True)
    seconds: dict[str, list[float]] = {"pytorch": [], "af2cpu": []}
    positions = {}
    with torch.no_grad():
        for kernel in seconds:  # warm-up
            model.set_options(dataclasses.replace(planned, attention=kernel))
            out = model.predict(features, num_recycle=0, return_representations=False)
            positions[kernel] = torch.as_tensor(out["structure_module"]["final_atom_positions"]).double()
        for _ in range(args.passes):
            for kernel, times in seconds.items():
                model.set_options(dataclasses.replace(planned, attention=kernel))
                start = time.perf_counter()
                model.predict(features, num_recycle=0, return_representations=False)
                times.append(time.perf_counter() - start)
    for kernel, times in seconds.items():
        print(json.dumps({"attention": kernel, "best_s": round(min(times), 3), "mean_s": round(statistics.mean(times), 3),
                          "passes": [round(t, 3) for t in times]}), flush=True)
    print(json.dumps({"speed-up of af2cpu's kernel (best)": round(min(seconds["pytorch"]) / min(seconds["af2cpu"]), 3),
                      "largest position difference (A)": float((positions["pytorch"] - positions["af2cpu"]).abs().max())}))
