"""The layer norm reading channel-first and strided rows as they are, and the triangle multiplication's output gate
multiplied in by oneDNN, against copying those rows contiguous first and multiplying by the gate in a pass of its
own, taking turns (docs/benchmarks.md, "Layer norms without copies, the output gate in the product"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/layouts.py module bf16 128 64 30
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/layouts.py block bf16 128 64 20
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/layouts.py pass bf16 128 64 6

``module``: the two triangle multiplications (outgoing, then incoming; in place, L residues); ``block``: one
Evoformer block (AlphaFold2's sizes, random weights, L residues and ROWS MSA rows, in place as a pass runs it);
``pass``: one pass of the whole network as ``af2cpu bench`` runs it (ROWS + 256 extra rows, 48 blocks, the options
``af2cpu predict`` plans for the precision). The earlier way is rebuilt for the comparison, not kept in the code:
af2cpu's layer norm is told to take only rows of one stride (so the triangle multiplication's channel-first sums
and blocks of columns are copied contiguous first, as before), and oneDNN's product is called without the gate,
which is then multiplied in place. Each of ``rounds`` rounds times both variants once in turn, after a warm-up
call of each. Prints the best and median times and their ratio as JSON lines.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time

import torch

from af2cpu.bench.machine import turns_summary
from af2cpu.bench.model import make_inputs, options
from af2cpu.model import kernels, primitives
from af2cpu.model.evoformer import (
    EvoformerIteration,
    TriangleMultiplicationIncoming,
    TriangleMultiplicationOutgoing,
)
from af2cpu.model.memory import TargetShape
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator


def _rows_of_one_stride(x: torch.Tensor) -> bool:
    """The layouts af2cpu's layer norm took before: channels contiguous, leading dimensions of one row stride."""
    if x.dtype not in (torch.float32, torch.bfloat16) or x.dim() == 0 or x.stride(-1) != 1:
        return False
    lead = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    return all(outer == inner * size for (_, outer), (size, inner) in itertools.pairwise(lead))


@contextlib.contextmanager
def copies_and_gate_pass():
    applies, linear = kernels.layer_norm_applies, primitives.onednn_linear

    def unfused(x, w, b=None, activation=None, multiply=None):
        y = linear(x, w, b, activation)
        return y if multiply is None else y.mul_(multiply)

    kernels.layer_norm_applies, primitives.onednn_linear = _rows_of_one_stride, unfused
    try:
        yield
    finally:
        kernels.layer_norm_applies, primitives.onednn_linear = applies, linear


def _set(module: torch.nn.Module, opts: Options) -> None:
    for m in module.modules():
        if hasattr(m, "options"):
            m.options = opts


def main(kind: str, precision: str, length: int, rows: int, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    arch = get_preset("model_1_ptm").architecture
    if kind == "pass":
        model, _, features = make_inputs(length, rows, 256)
        model.set_options(options(precision, TargetShape.of_features(model.preset, features), preset=model.preset))

        def run():
            model.predict(features, num_recycle=0, return_representations=False)
    else:
        opts = Options(precision=precision, attention="auto", elementwise="auto", fp32_products="auto")
        pair = torch.randn(length, length, arch.pair_channel).to(dtype)
        pair_mask = torch.ones(length, length)
        if kind == "module":
            c = arch.evoformer.num_intermediate_channel
            modules = [TriangleMultiplicationOutgoing(arch.pair_channel, c).eval(),
                       TriangleMultiplicationIncoming(arch.pair_channel, c).eval()]
            for module in modules:
                _set(module, opts)

            def run():
                for module in modules:
                    module(pair, pair_mask, inplace=True)
        else:
            block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
            _set(block, opts)
            msa = torch.randn(rows, length, arch.evoformer.msa_channel).to(dtype)
            msa_mask = torch.ones(rows, length)

            def run():
                block(msa, pair, msa_mask, pair_mask, inplace=True)
    variants = {"copies and a gate pass": copies_and_gate_pass, "in place, gate in the product": contextlib.nullcontext}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for name, variant in variants.items():
            with variant():
                run()
        for _ in range(rounds):
            for name, variant in variants.items():
                with variant():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    for record in turns_summary(times, unit="s" if kind == "pass" else "ms"):
        print(json.dumps({"kind": kind, "precision": precision, "length": length, "rows": rows, **record}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
         int(sys.argv[5]) if len(sys.argv) > 5 else 5)
