"""Where one Evoformer block's time goes, timed directly (docs/benchmarks.md, "bf16 on AMX").

torch.profiler's per-op times inflated the products of a bf16 block 3-4x on this machine (a product
of 2048 x 256 x 1024 took 1.28 ms in the profile, 0.43 ms timed around the call), so this script
times the kinds of work with perf_counter around the calls themselves:

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/results-amx-2core/block_time.py eager bf16 128 64

prints the block's time (in place, as a pass runs it, the same input each round) and, of the last
round, the time, count, work and GFLOP/s of the matrix products (torch.addmm, torch.mm, torch.bmm and
the @ operator), PyTorch's attention kernel and the layer norms; the rest is the element-wise work,
copies and Python. The wrappers add a few ms.

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/results-amx-2core/block_time.py compiled MODE

times the block eager against torch.compile (static shapes), the two taking turns: MODE ``default``,
``freezing`` (weights folded in as constants) or ``autotune`` (freezing, and inductor's C++ GEMM
templates with AMX micro-kernels competing with oneDNN for each product: max_autotune).
"""

from __future__ import annotations

import collections
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.options import Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator


def make_block(precision: str, length: int, rows: int, compile: bool = False):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    arch = get_preset("model_1_ptm").architecture
    block = EvoformerIteration(arch.evoformer, arch.pair_channel).eval()
    for module in block.modules():
        if hasattr(module, "options"):
            module.options = Options(precision=precision, compile=compile)
    msa = torch.randn(rows, length, arch.evoformer.msa_channel).to(dtype)
    pair = torch.randn(length, length, arch.pair_channel).to(dtype)
    return block, (msa, pair, torch.ones(rows, length), torch.ones(length, length))


def _timed(owner, name: str, kind: str, times, counts, work, flop=None) -> None:
    original = getattr(owner, name)

    def call(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        times[kind] += time.perf_counter() - start
        counts[kind] += 1
        if flop is not None:
            work[kind] += flop(args, out)
        return out

    setattr(owner, name, call)


def eager(precision: str, length: int, rows: int, rounds: int = 6) -> None:
    block, inputs = make_block(precision, length, rows)
    with torch.no_grad():
        plain = []
        for _ in range(rounds):
            start = time.perf_counter()
            block(*inputs, inplace=True)
            plain.append(time.perf_counter() - start)
    times, counts, work = collections.defaultdict(float), collections.Counter(), collections.Counter()
    _timed(F, "scaled_dot_product_attention", "attention kernel", times, counts, work,
           lambda a, y: 4 * a[0].shape[0] * a[0].shape[1] * a[0].shape[2] * a[1].shape[2] * a[0].shape[3])
    _timed(torch, "addmm", "products: addmm", times, counts, work,
           lambda a, y: 2 * a[1].shape[0] * a[1].shape[1] * a[2].shape[1])
    _timed(torch, "mm", "products: mm", times, counts, work, lambda a, y: 2 * a[0].shape[0] * a[0].shape[1] * a[1].shape[1])
    _timed(torch, "bmm", "products: bmm", times, counts, work,
           lambda a, y: 2 * a[0].shape[0] * a[0].shape[1] * a[0].shape[2] * a[1].shape[2])
    _timed(torch.Tensor, "__matmul__", "products: @", times, counts, work, lambda a, y: 2 * y.numel() * a[0].shape[-1])
    _timed(F, "layer_norm", "layer norms", times, counts, work)
    with torch.no_grad():
        wrapped = []
        for _ in range(rounds):
            times.clear(), counts.clear(), work.clear()
            start = time.perf_counter()
            block(*inputs, inplace=True)
            wrapped.append(time.perf_counter() - start)
    total = wrapped[-1]
    print(f"{precision}, L={length}, {rows} rows: block best {1e3 * min(plain):.1f} ms "
          f"(median {1e3 * statistics.median(plain):.1f}); with the timers {1e3 * total:.1f} ms")
    for kind, seconds in sorted(times.items(), key=lambda item: -item[1]):
        gflop = work[kind] / 1e9
        rate = f"{gflop:5.1f} GFLOP {gflop / seconds:6.0f} GFLOP/s" if gflop else ""
        print(f"  {kind:18s} {1e3 * seconds:6.1f} ms {100 * seconds / total:5.1f} %  {counts[kind]:3d} calls  {rate}")
    rest = total - sum(times.values())
    print(f"  {'the rest':18s} {1e3 * rest:6.1f} ms {100 * rest / total:5.1f} %")


class _Whole(nn.Module):
    """The block as a module of its own, so that freezing sees its weights as attributes."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, msa, pair, msa_mask, pair_mask):
        return self.block(msa, pair, msa_mask, pair_mask)


def compiled(mode: str, length: int = 128, rows: int = 64, rounds: int = 7) -> None:
    import torch._inductor.config as inductor  # deferred: only the compiled comparison configures inductor

    block, inputs = make_block("bf16", length, rows)
    whole = _Whole(block).eval()
    if mode in ("freezing", "autotune"):
        inductor.freezing = True
    if mode == "autotune":
        inductor.max_autotune = True
        inductor.max_autotune_gemm_backends = "CPP,ATEN"
    fn = torch.compile(whole, dynamic=False)
    eager_options, compiled_options = Options(precision="bf16"), Options(precision="bf16", compile=True)

    def use(options):
        for module in block.modules():
            if hasattr(module, "options"):
                module.options = options

    with torch.no_grad():
        use(compiled_options)
        start = time.perf_counter()
        fn(*inputs)
        print(f"{mode}: compilation and first call {time.perf_counter() - start:.1f} s")
        best = {"eager": [], "compiled": []}
        for _ in range(rounds):
            use(eager_options)
            start = time.perf_counter()
            whole(*inputs)
            best["eager"].append(time.perf_counter() - start)
            use(compiled_options)
            start = time.perf_counter()
            fn(*inputs)
            best["compiled"].append(time.perf_counter() - start)
    print({name: f"best {1e3 * min(t):.1f} ms, median {1e3 * statistics.median(t):.1f}" for name, t in best.items()})


if __name__ == "__main__":
    tune_allocator()  # as af2cpu bench and predict run
    torch.set_num_threads(2)
    if sys.argv[1] == "eager":
        eager(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        compiled(sys.argv[2] if len(sys.argv) > 2 else "default")
