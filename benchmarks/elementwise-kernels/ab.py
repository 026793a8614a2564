"""One Evoformer block, af2cpu's element-wise kernels and fused layer epilogues against PyTorch's, taking turns
(docs/benchmarks.md, "Element-wise work and fused epilogues"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/ab.py bf16 128 64 10

times a block (AlphaFold2's Evoformer sizes, random weights, L residues and ROWS MSA rows, in place as a pass runs
it) in ``rounds`` rounds of three variants, one pass each in turn: PyTorch's element-wise work with the layers'
products through PyTorch's addmm ("pytorch, addmm"), the same with the bias and activations in oneDNN's linear
kernel ("pytorch, fused epilogues"; bf16 only: oneDNN's bf16 kernels need native bf16), and af2cpu's element-wise
kernels on top ("af2cpu, fused epilogues"). In fp32 the products are MKL's or oneDNN's as runtime.fp32_products=auto
decides (oneDNN's, with the fused epilogues, where MKL sees an AMD CPU), and two variants remain: PyTorch's
element-wise work and af2cpu's. runtime.attention is auto throughout. Prints the best and median block times, and
their ratios to the first variant, as JSON lines.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from af2cpu.bench.machine import turns_summary
from af2cpu.model import primitives
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.products import onednn_bf16_available


def main(precision: str, length: int, rows: int, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    arch = get_preset("model_1_ptm").architecture
    block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
    inputs = (torch.randn(rows, length, arch.evoformer.msa_channel).to(dtype),
              torch.randn(length, length, arch.pair_channel).to(dtype), torch.ones(rows, length), torch.ones(length, length))
    fused = onednn_bf16_available() if precision == "bf16" else True
    variants = {"pytorch, addmm": ("pytorch", False), "pytorch, fused epilogues": ("pytorch", fused),
                "af2cpu, fused epilogues": ("af2cpu", fused)}
    if precision != "bf16":
        variants = {"pytorch": ("pytorch", True), "af2cpu": ("af2cpu", True)}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(rounds):
            for name, (elementwise, epilogues) in variants.items():
                primitives.onednn_bf16_available = (lambda on=epilogues: on)
                for module in block.modules():
                    if hasattr(module, "options"):
                        module.options = Options(precision=precision, attention="auto", elementwise=elementwise,
                                                 fp32_products="auto")
                block(*inputs, inplace=True)  # the first call of a variant builds its kernels' primitives
                start = time.perf_counter()
                block(*inputs, inplace=True)
                times[name].append(time.perf_counter() - start)
    for record in turns_summary(times):
        print(json.dumps({"precision": precision, "length": length, "rows": rows, **record}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 10)
