"""tune_allocator keeps freed tensor memory in the process: an Evoformer block's temporaries,
allocated and freed block after block, are not page-faulted in again each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from af2cpu.runtime.allocator import tune_allocator

_PROBE = """
import resource, sys
import torch
from af2cpu.model.evoformer import EvoformerIteration
if sys.argv[1] == "tuned":
    from af2cpu.runtime.allocator import tune_allocator
    assert tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = EvoformerIteration().eval()
msa, pair = torch.randn(32, 96, 256), torch.randn(96, 96, 128)
with torch.inference_mode():
    block(msa, pair, torch.ones(32, 96), torch.ones(96, 96))
    before = faults()
    for _ in range(2):
        block(msa, pair, torch.ones(32, 96), torch.ones(96, 96))
print(faults() - before)
"""


def _faults(mode: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not tune_allocator(), reason="glibc's mallopt is not available here")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, tuned = _faults("default"), _faults("tuned")
    # Measured (two Evoformer blocks at L=96, 2 threads): default 10 thousand minor faults
    # (freed heap handed back and faulted in again), tuned 250.
    assert tuned < default / 4


def test_tuning_twice_is_harmless():
    assert tune_allocator() == tune_allocator()
