"""bf16 runs keeping their weights' bf16 casts against casting them at every product, taking turns
(docs/benchmarks.md, "Kept bf16 weights"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/kept-weights/ab.py block 128 64 10
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/kept-weights/ab.py pass 128 64 3

``block``: one Evoformer block (AlphaFold2's sizes, random weights, L residues and ROWS MSA rows, in place as a pass
runs it); ``pass``: one pass of the whole network as ``af2cpu bench`` runs it (``ROWS`` + 256 extra rows, 48 blocks,
the options ``af2cpu predict`` plans). Each of ``rounds`` rounds times both variants once in turn, after a warm-up
call of each (which builds oneDNN's primitives and, kept, the copies). ``Options.keep_weights`` is the only
difference; every other run-time choice is auto. Prints the best and median times and their ratio as JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from af2cpu.bench.machine import turns_summary
from af2cpu.bench.model import make_inputs, options
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.memory import TargetShape
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator


def _set(module: torch.nn.Module, opts: Options) -> None:
    for m in module.modules():
        if hasattr(m, "options"):
            m.options = opts


def main(kind: str, length: int, rows: int, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    if kind == "block":
        arch = get_preset("model_1_ptm").architecture
        model = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
        inputs = (torch.randn(rows, length, arch.evoformer.msa_channel).bfloat16(),
                  torch.randn(length, length, arch.pair_channel).bfloat16(), torch.ones(rows, length),
                  torch.ones(length, length))
        base = Options(precision="bf16", attention="auto", elementwise="auto", fp32_products="auto")

        def run():
            model(*inputs, inplace=True)
    else:
        model, _, features = make_inputs(length, rows, 256)
        base = options("bf16", TargetShape.of_features(model.preset, features), preset=model.preset)

        def run():
            model.predict(features, num_recycle=0, return_representations=False)
    variants = {"cast at every product": False, "kept": True}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for name, keep in variants.items():
            _set(model, dataclasses.replace(base, keep_weights=keep))
            run()
        for _ in range(rounds):
            for name, keep in variants.items():
                _set(model, dataclasses.replace(base, keep_weights=keep))
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    for record in turns_summary(times, unit="s"):
        print(json.dumps({"kind": kind, "precision": base.precision.value, "length": length, "rows": rows, **record}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 5)
