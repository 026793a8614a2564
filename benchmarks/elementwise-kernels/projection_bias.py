"""The triangle multiplication's channel-first projections: the product adding their bias (PyTorch's addmm, which in
bf16 first copies the bias into its output) against the product alone with the bias added by af2cpu's gate kernel as
it reads the product (docs/benchmarks.md, "Kept bf16 weights, and what the products allow"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/projection_bias.py module bf16 128 30
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/projection_bias.py block bf16 128 20

``module``: one TriangleMultiplicationOutgoing (AlphaFold2's sizes, L residues); ``block``: one Evoformer block with
64 MSA rows, in place as a pass runs it. The two variants take turns in ``rounds`` rounds; the earlier one is the
current code with its gate step put back as it was (``evoformer._Gates``: the bias in the product, the gate kernel
without biases). runtime.elementwise=af2cpu in both (the variants differ only there). Prints JSON lines.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from af2cpu.bench.machine import turns_summary
from af2cpu.model import evoformer, kernels
from af2cpu.model.evoformer import EvoformerIteration, TriangleMultiplicationOutgoing
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator

NEW_INIT, NEW_APPLY = evoformer._Gates.__init__, evoformer._Gates.apply


def _bias_in_product_init(self, *args):
    NEW_INIT(self, *args)
    self.product_bias = args[4]  # the (4c, 1) bias in the activations' dtype: the product adds it


def _gate_without_biases(self, block, rows, out):
    half = block.shape[0] // 2
    mask = None if self.mask32 is None else self.mask32[rows].reshape(-1)
    kernels.gated(block[:half].view(half, -1), block[half:].view(half, -1), mask, out.view(half, -1))


def main(kind: str, precision: str, length: int, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    opts = Options(precision=precision, attention="auto", elementwise="af2cpu", fp32_products="auto")
    if kind == "module":
        model = TriangleMultiplicationOutgoing(128, 128).eval()
        inputs, call = (torch.randn(length, length, 128).to(dtype), torch.ones(length, length)), {}
    else:
        arch = get_preset("model_1_ptm").architecture
        model = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
        inputs = (torch.randn(64, length, arch.evoformer.msa_channel).to(dtype),
                  torch.randn(length, length, arch.pair_channel).to(dtype), torch.ones(64, length),
                  torch.ones(length, length))
        call = {"inplace": True}
    for m in model.modules():
        if hasattr(m, "options"):
            m.options = opts
    variants = {"bias in the product": (_bias_in_product_init, _gate_without_biases),
                "bias in the gate kernel": (NEW_INIT, NEW_APPLY)}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(rounds):
            for name, (init, apply) in variants.items():
                evoformer._Gates.__init__, evoformer._Gates.apply = init, apply
                model(*inputs, **call)
                start = time.perf_counter()
                model(*inputs, **call)
                times[name].append(time.perf_counter() - start)
    evoformer._Gates.__init__, evoformer._Gates.apply = NEW_INIT, NEW_APPLY
    for record in turns_summary(times):
        print(json.dumps({"kind": kind, "precision": precision, "length": length, **record}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 20)
