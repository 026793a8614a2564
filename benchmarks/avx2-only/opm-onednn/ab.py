"""One pass with the outer product mean's outer products through oneDNN (as af2cpu runs them where the
run's fp32 products are oneDNN's) against the same pass with only those products through MKL, the two
taking turns pass by pass on one model (docs/benchmarks.md, "MKL as on an AMD CPU"). Run presented as
an AMD CPU, where `auto` takes oneDNN:

    AF2CPU_CPUID_VENDOR=amd OMP_NUM_THREADS=2 GOMP_SPINCOUNT=10000 OMP_WAIT_POLICY=ACTIVE \
        scripts/avx2only/run .venv/bin/python benchmarks/avx2-only/opm-onednn/ab.py 128

Also prints the largest difference of the atoms between the two (float noise: the same sums in another
order). In af2cpu.model.evoformer the products without a bias are the outer products (the projections
and output layers have one), which is how the MKL variant picks them.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time

import torch

from af2cpu.bench.model import make_inputs, options
from af2cpu.model import evoformer
from af2cpu.model.memory import TargetShape
from af2cpu.runtime.allocator import tune_allocator

if __name__ == "__main__":
    tune_allocator()
    torch.set_num_threads(2)
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    model, _, features = make_inputs(length, 64, 256, 48)
    model.set_options(options("fp32", TargetShape.of_features(model.preset, features)))
    one_pass = functools.partial(model.predict, features, num_recycle=0, return_representations=False)
    through_onednn = evoformer.matmul

    def outer_products_mkl(x, w, b=None, *, onednn=False, out=None):
        return through_onednn(x, w, b, onednn=onednn and b is not None, out=out)

    variants = {"outer products MKL": outer_products_mkl, "outer products oneDNN": through_onednn}
    times, atoms = {name: [] for name in variants}, {}
    with torch.no_grad():
        for name, matmul in variants.items():  # warm-up
            evoformer.matmul = matmul
            one_pass()
        for _ in range(3):
            for name, matmul in variants.items():
                evoformer.matmul = matmul
                start = time.perf_counter()
                out = one_pass()
                times[name].append(time.perf_counter() - start)
                atoms[name] = torch.as_tensor(out["structure_module"]["final_atom_positions"])
    print(f"L={length}", {name: f"best {min(t):.3f} s, mean {statistics.mean(t):.3f}" for name, t in times.items()})
    first, second = atoms.values()
    print(f"atoms: largest difference {float((first - second).abs().max()):.2e} A")
