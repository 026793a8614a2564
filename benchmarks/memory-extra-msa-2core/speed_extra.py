"""The extra-MSA stack (4 blocks, eager, in place as the trunk runs it), or 4 Evoformer blocks, main's
modules against this tree's, with the same parameters, timed alternately in one process (min and
median of the calls, fp32 and bf16), and whether both give the same numbers.

Usage (from the repository root):
    python benchmarks/memory-extra-msa-2core/speed_extra.py L ROWS REPEATS DIR [evoformer]
DIR holding main's modules before this round (commit 83538b5) under other names:
    git show 83538b5:model/attention.py > DIR/attention_old.py
    git show 83538b5:model/evoformer.py | sed 's/from af2cpu.model.attention import/from attention_old import/' \
        > DIR/evoformer_old.py
"""

import dataclasses
import importlib
import statistics
import sys
import time

import torch

from af2cpu.model import evoformer
from af2cpu.model.options import Options
from af2cpu.model.presets import Architecture


def main() -> None:
    length, rows, repeats, old_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, old_dir)
    evoformer_old = importlib.import_module("evoformer_old")
    a = Architecture()
    kind = sys.argv[5] if len(sys.argv) > 5 else "extra_msa"
    stack = dataclasses.replace(getattr(a, kind), num_block=1)
    torch.manual_seed(0)
    new = [evoformer.EvoformerIteration(stack, a.pair_channel).eval() for _ in range(4)]
    old = [evoformer_old.EvoformerIteration(stack, a.pair_channel).eval() for _ in range(4)]
    with torch.no_grad():
        for n, o in zip(new, old):
            for p in n.parameters():
                p.copy_(torch.randn(p.shape) * (p.shape[0] ** -0.5 if p.dim() > 1 else 0.1))
            o.load_state_dict(n.state_dict())
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for block in new + old:
            for module in block.modules():
                if hasattr(module, "options"):
                    module.options = Options(precision=precision)
        msa0 = torch.randn(rows, length, stack.msa_channel).to(dtype)
        pair0 = torch.randn(length, length, a.pair_channel).to(dtype)
        mask = (torch.rand(rows, length) > 0.1).to(dtype)
        pair_mask = torch.ones(length, length, dtype=dtype)
        times = {"main": [], "now": []}
        results = {}
        with torch.inference_mode():
            for rep in range(repeats + 1):  # the first round warms up and keeps the results
                order = (("main", old), ("now", new)) if rep % 2 else (("now", new), ("main", old))
                for name, blocks in order:
                    msa, pair = msa0.clone(), pair0.clone()
                    start = time.perf_counter()
                    for block in blocks:
                        msa, pair = block(msa, pair, mask, pair_mask, inplace=True)
                    seconds = time.perf_counter() - start
                    if rep:
                        times[name].append(seconds)
                    else:
                        results[name] = msa, pair
        same = all(torch.equal(x, y) for x, y in zip(results["main"], results["now"]))
        print(f"{precision} L={length} {kind} rows={rows}, 4 blocks: " + "; ".join(
            f"{k} min {min(v):.2f} s, median {statistics.median(v):.2f} s" for k, v in times.items())
            + f"; same numbers: {same}", flush=True)


if __name__ == "__main__":
    main()
