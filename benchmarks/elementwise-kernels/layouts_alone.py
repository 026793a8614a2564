"""Session 16's element-wise changes one by one, each against the way it ran before, the two taking turns (best of
``rounds``; docs/benchmarks.md, "Layer norms without copies, the output gate in the product"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/layouts_alone.py bf16 30
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 scripts/avx2only/run .venv/bin/python \\
        benchmarks/elementwise-kernels/layouts_alone.py fp32 30

At the Evoformer's shapes for L=128 (a step of 32 pair rows, a block of 16 columns of 256 extra-MSA rows):
- the triangle multiplication's centre layer norm on its channel-first sums: a contiguous copy, then the row
  kernel (before), against the channel-first kernel;
- a layer norm of a block of columns (rows of two strides): copy, then the row kernel, against the row kernel on
  the block as it lies;
- the output projection times its gate: oneDNN's product then the multiplication in place, against the gate
  multiplied in by oneDNN (only where the product is oneDNN's: bf16 with native bf16);
- the outer product mean's division by its counts, then the residual sum (bf16: PyTorch's division of a bf16
  update by fp32 counts, then af2cpu's sum), against af2cpu's sum dividing as it adds;
- the column global attention's masked mean and gate (the extra MSA's 256 rows x 128 columns): the fp32 product
  of mask and rows then its sum, the gate's product, bias and sigmoid apart (before), against the sum of the
  valid rows as they lie and the bias and sigmoid in the product.
Prints one JSON line per change: the best times in microseconds and the speed-up.
"""

from __future__ import annotations

import json
import sys

import torch

from af2cpu.model import kernels
from af2cpu.model.primitives import matmul, through_onednn
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.precision import interleaved_times


def main(precision: str, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if kernels.load() is None:
        raise SystemExit("af2cpu's kernels cannot be built here")
    cases = {}
    scale, offset = torch.randn(128), torch.randn(128)
    sums = torch.randn(128, 64, 128).to(dtype)  # (c, rows, L): a block of 64 product rows, 32 a step
    centre = sums[:, :32].permute(1, 2, 0)
    cases["centre layer norm, channel-first (32, 128, 128)"] = {
        "before": lambda: kernels.layer_norm(centre.contiguous(), scale, offset, 1e-5),
        "after": lambda: kernels.layer_norm(centre, scale, offset, 1e-5)}
    extra = torch.randn(256, 128, 64).to(dtype)
    columns = extra[:, :16].transpose(0, 1)  # (16 columns, 256 rows, 64): rows of two strides
    s64, o64 = torch.randn(64), torch.randn(64)
    cases["layer norm of a block of columns (16, 256, 64)"] = {
        "before": lambda: kernels.layer_norm(columns.contiguous(), s64, o64, 1e-5),
        "after": lambda: kernels.layer_norm(columns, s64, o64, 1e-5)}
    x, w, b = torch.randn(4096, 128).to(dtype), (torch.randn(128, 128) / 12).to(dtype), torch.randn(128).to(dtype)
    gate = torch.rand(4096, 128).to(dtype)
    with torch.no_grad():  # oneDNN's path is taken without autograd only
        fused_here = through_onednn(x, onednn=False)
    if fused_here:
        cases["output projection times its gate (4096, 128) @ (128, 128)"] = {
            "before": lambda: matmul(x, w, b).mul_(gate), "after": lambda: matmul(x, w, b, multiply=gate)}
    act, update = torch.randn(16, 128, 128).to(dtype), torch.randn(16, 128, 128).to(dtype)
    counts = torch.rand(16, 128, 1) * 100 + 1

    def divided_then_added():
        quotient = update.clone().div_(counts)
        if not kernels.add_into(act, quotient):
            act.add_(quotient)

    def divided_as_added():
        if not kernels.add_into(act, update.clone(), counts):
            act.add_(update.clone().div_(counts))

    cases["outer product mean's counts, then the sum (16, 128, 128)"] = {
        "before": divided_then_added, "after": divided_as_added}
    q_data = torch.randn(128, 256, 64).to(dtype)  # (columns, rows, c)
    q_mask = torch.ones(128, 256, 1)
    gating_w, gating_b = (torch.randn(64, 64) / 8).to(dtype), torch.randn(64).to(dtype)

    def mean_and_gate_before():
        mean = ((q_mask * q_data).sum(1) / (q_mask.sum(1) + 1e-10)).to(dtype)
        g = torch.sigmoid_(matmul(q_data.reshape(-1, 64), gating_w).view(128, 256, 8, 8) + gating_b.view(8, 8))
        return mean, g

    def mean_and_gate_after():
        total = q_data.sum(1, dtype=torch.float32) if bool(q_mask.bool().all()) else (q_mask * q_data).sum(1)
        mean = (total / (q_mask.sum(1) + 1e-10)).to(dtype)
        return mean, matmul(q_data.reshape(-1, 64), gating_w, gating_b, activation="sigmoid")

    cases["column global attention's mean and gate (128 x 256 rows, 64)"] = {
        "before": mean_and_gate_before, "after": mean_and_gate_after}
    with torch.no_grad():
        for name, calls in cases.items():
            best = {k: min(v) for k, v in interleaved_times(calls, rounds).items()}
            print(json.dumps({"precision": precision, "case": name, "build": kernels.loaded(),
                              "before_us": round(best["before"] * 1e6, 1), "after_us": round(best["after"] * 1e6, 1),
                              "speedup": round(best["before"] / best["after"], 2)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
