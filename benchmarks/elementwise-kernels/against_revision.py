"""af2cpu's element-wise kernels as built now against the same kernels of another git revision, in one process,
the two taking turns (best and median of ``rounds``; docs/benchmarks.md, "The gate's sigmoid without a division"):

    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 python benchmarks/elementwise-kernels/against_revision.py HEAD~1 bf16 30
    OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 scripts/avx2only/run .venv/bin/python \\
        benchmarks/elementwise-kernels/against_revision.py HEAD~1 fp32 30

The revision's model/csrc/attention.cpp is built for this CPU as af2cpu.model.kernels builds the working tree's
(its operators under another namespace), and both are called on the shapes auto measures
(af2cpu.model.kernels.LAYER_NORM_SHAPES, GATE_SHAPE, SUM_SHAPE) and on the triangle multiplication's
channel-first gated projections with a bias per channel (128 channels x 32 rows of 128 residues). Prints one
JSON line per operation: the best and median times in microseconds and the speed-up of the working tree's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from af2cpu.model import kernels
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.precision import interleaved_times

ROOT = Path(__file__).resolve().parents[2]


def build_revision(revision: str, folder: Path):
    """The operators of ``revision``'s kernels, built for this CPU."""
    source = subprocess.run(["git", "show", f"{revision}:model/csrc/attention.cpp"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = folder / "attention_revision.cpp"
    path.write_text(source)
    load(name="af2cpu_attention_revision", sources=[str(path)], build_directory=str(folder),
         extra_cflags=[*kernels.compiler_flags(kernels.loaded()), "-DAF2CPU_OPS=af2cpu_revision"],
         is_python_module=False)
    return torch.ops.af2cpu_revision


def main(revision: str, precision: str, rounds: int) -> None:
    tune_allocator()
    torch.manual_seed(0)
    if kernels.load() is None:
        raise SystemExit("af2cpu's kernels cannot be built here")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    revision = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        ops = {"revision": build_revision(revision, Path(folder)), "now": torch.ops.af2cpu}
        a, g = (torch.randn(2, 1, *kernels.GATE_SHAPE) * 3).to(dtype)
        proj = (torch.randn(256, 32, 128) * 3).to(dtype)  # (2c, rows, L): the channel-first projections
        biases = torch.randn(128), torch.randn(128)
        norms = [(torch.randn(shape).to(dtype), torch.randn(shape[-1]), torch.randn(shape[-1]))
                 for shape in kernels.LAYER_NORM_SHAPES]
        act, update = (0.01 * torch.randn(2, *kernels.SUM_SHAPE)).to(dtype)
        out, out_proj = torch.empty_like(a), torch.empty(128, 32, 128, dtype=dtype)
        cases = {
            f"gate {tuple(kernels.GATE_SHAPE)}": lambda op: op.gated(a, g, None, out, None, None),
            "gate with a bias per channel (128, 32, 128)": lambda op: op.gated(proj[:128], proj[128:], None, out_proj,
                                                                               *biases),
            "layer norms " + " ".join(str(s) for s in kernels.LAYER_NORM_SHAPES):
                lambda op: [op.layer_norm(x, s, o, 1e-5) for x, s, o in norms],
            f"residual sum {tuple(kernels.SUM_SHAPE)}": lambda op: op.add_into(act, update, None),
        }
        for name, call in cases.items():
            times = interleaved_times({who: (lambda op=op, call=call: call(op)) for who, op in ops.items()}, rounds)
            best = {who: min(seconds) * 1e6 for who, seconds in times.items()}
            median = {who: statistics.median(seconds) * 1e6 for who, seconds in times.items()}
            print(json.dumps({"case": name, "precision": precision, "revision": revision, "isa": kernels.loaded(),
                              "best_us": {k: round(v, 1) for k, v in best.items()},
                              "median_us": {k: round(v, 1) for k, v in median.items()},
                              "speedup_best": round(best["revision"] / best["now"], 3),
                              "speedup_median": round(median["revision"] / median["now"], 3)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30)
