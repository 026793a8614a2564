"""How fast one pass's matrix products and attention kernels could run at best: each call of an `af2cpu bench` pass
replayed alone, hot in cache, against the time the pass gave it (docs/benchmarks.md, "What the products allow"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/roofline/products_alone.py bf16 128
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 scripts/avx2only/run .venv/bin/python \\
        benchmarks/roofline/products_alone.py fp32 64 --default-msa-sizes --msa-rows 133 --extra-rows 0

runs one pass of the bench model (48 blocks, ``--msa-rows`` + ``--extra-rows`` rows, the options `af2cpu predict`
plans for ``precision``) after a warm-up pass, recording every call of the functions `af2cpu bench`'s breakdown
counts as matrix products or attention kernels (af2cpu.bench.model's timed work) with the time it took there. Then
each distinct call (function, operands' shapes, strides and dtype, keyword arguments) is replayed alone on a copy
of its operands, ``--repeats`` times, its best time kept, and multiplied by how often the pass made it. Prints, as
JSON: per kind, the time in the pass and alone and the GFLOP/s both ways; the whole pass's GFLOP (`af2cpu bench`'s
count) at the rate the two kinds alone allow, against the GEMM peak `af2cpu bench` measures; and the calls that
lost most in the pass. The calls alone are a floor for the pass: with the element-wise work free and every product
and attention as fast as it runs alone in a hot cache, the pass could not run faster than that.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict

import torch

from af2cpu.bench.machine import gemm_peak
from af2cpu.bench.model import TIMED_WORK, ReferenceModel, flop_counter, make_inputs, options
from af2cpu.model.memory import TargetShape
from af2cpu.runtime.allocator import tune_allocator


def _copy(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype).copy_(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _key(name, args, kwargs):
    def describe(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), tuple(value.stride()), str(value.dtype))
        if isinstance(value, (list, tuple)):
            return tuple(describe(v) for v in value)
        return repr(value)
    return (name, describe(args), tuple(sorted((k, describe(v)) for k, v in kwargs.items() if k != "out")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("precision", choices=("fp32", "bf16"))
    parser.add_argument("length", type=int)
    parser.add_argument("--msa-rows", type=int, default=64)
    parser.add_argument("--extra-rows", type=int, default=256)
    parser.add_argument("--default-msa-sizes", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference", action="store_true",
                        help="also time one pass of DeepMind's model on the same inputs (the bench's reference): "
                             "the speed-up the floor would allow, measured in the same run")
    args = parser.parse_args()
    tune_allocator()
    model, flat, features = make_inputs(args.length, args.msa_rows, args.extra_rows,
                                        default_sizes=args.default_msa_sizes)
    model.set_options(options(args.precision, TargetShape.of_features(model.preset, features), preset=model.preset))
    calls: dict = {}
    counts, seconds, flops, kinds = defaultdict(int), defaultdict(float), defaultdict(int), {}
    timed = [(owner, name, kind, count) for owner, name, kind, count in TIMED_WORK
             if kind in ("matrix products", "attention kernel")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in timed]

    def recording(owner, name, kind, original, count):
        def call(*a, **kw):
            start = time.perf_counter()
            out = original(*a, **kw)
            elapsed = time.perf_counter() - start
            key = _key(f"{getattr(owner, '__name__', type(owner).__name__)}.{name}", a, kw)
            if key not in calls:
                calls[key] = (original, _copy(a), {k: _copy(v) for k, v in kw.items() if k != "out"})
                kinds[key] = kind
            counts[key] += 1
            seconds[key] += elapsed
            flops[key] += count(a, out)
            return out
        return call

    with torch.no_grad():
        model.predict(features, num_recycle=0, return_representations=False)  # warm-up
        with flop_counter() as counter:  # the pass's GFLOP as `af2cpu bench` counts them
            model.predict(features, num_recycle=0, return_representations=False)
        pass_flop = counter.get_total_flops()
        start = time.perf_counter()
        model.predict(features, num_recycle=0, return_representations=False)
        pass_s = time.perf_counter() - start  # a pass as the bench times it, without the recording below
        try:
            for (owner, name, kind, count), (_, _, original) in zip(timed, originals, strict=True):
                setattr(owner, name, recording(owner, name, kind, original, count))
            model.predict(features, num_recycle=0, return_representations=False)
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        alone = {}
        for key, (original, a, kw) in calls.items():
            original(*a, **kw)
            best = math.inf
            for _ in range(args.repeats):
                start = time.perf_counter()
                original(*a, **kw)
                best = min(best, time.perf_counter() - start)
            alone[key] = best * counts[key]
    peak = gemm_peak()[args.precision]
    per_kind = {}
    for kind in ("matrix products", "attention kernel"):
        keys = [k for k in calls if kinds[k] == kind]
        flop, in_pass, by_itself = (sum(flops[k] for k in keys), sum(seconds[k] for k in keys),
                                    sum(alone[k] for k in keys))
        per_kind[kind] = {"calls": sum(counts[k] for k in keys), "distinct": len(keys), "gflop": round(flop / 1e9, 1),
                          "in_pass_s": round(in_pass, 3), "alone_s": round(by_itself, 3),
                          "in_pass_gflops": round(flop / in_pass / 1e9, 1) if in_pass else None,
                          "alone_gflops": round(flop / by_itself / 1e9, 1) if by_itself else None}
    floor = sum(alone.values())
    reference_s = None
    if args.reference:  # one pass, after XLA's compilation, as af2cpu bench times it at the default sizes
        step, _ = ReferenceModel().step_fn(flat, features, 48, model.preset)
        start = time.perf_counter()
        step()
        reference_s = time.perf_counter() - start
    gaps = sorted(calls, key=lambda k: alone[k] - seconds[k])[:8]
    print(json.dumps({
        "precision": args.precision, "length": args.length, "msa_rows": args.msa_rows, "extra_rows": args.extra_rows,
        "default_msa_sizes": args.default_msa_sizes, "pass_s": round(pass_s, 3), "gemm_peak_gflops": peak,
        "pass_gflop": round(pass_flop / 1e9, 1), "per_kind": per_kind, "floor_s": round(floor, 3),
        "pass_at_floor_of_peak": round(pass_flop / floor / 1e9 / peak, 3),
        "pass_of_peak": round(pass_flop / pass_s / 1e9 / peak, 3),
        "reference_s": None if reference_s is None else round(reference_s, 2),
        "speedup_at_floor": None if reference_s is None else round(reference_s / floor, 2),
        "largest_gaps": [{"call": key[0], "operands": [d[1] for d in key[1] if isinstance(d, tuple) and d[:1] == ("tensor",)],
                          "calls": counts[key], "in_pass_ms": round(1e3 * seconds[key], 1),
                          "alone_ms": round(1e3 * alone[key], 1),
                          "alone_gflops": round(flops[key] / alone[key] / 1e9, 1) if alone[key] else None}
                         for key in gaps],
    }, indent=1))


if __name__ == "__main__":
    main()
