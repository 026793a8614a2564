"""tune_allocator keeps freed tensor memory in the process: a tensor of several MiB comes from
glibc's heap instead of its own mmap, and stays there for reuse once freed, instead of being
returned to the kernel and page-faulted in again by the next allocation. (What this saves per
Evoformer block is measured by the benchmarks, docs/benchmarks.md.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from af2cpu.runtime.allocator import tune_allocator

_PROBE = """
import ctypes, sys
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from af2cpu.runtime.allocator import tune_allocator
    assert tune_allocator()
torch.set_num_threads(1)
before = libc.mallinfo2().hblkhd
x = torch.ones(4 << 20)  # 16 MiB
mapped = libc.mallinfo2().hblkhd - before  # bytes in blocks of their own mmap
del x
print(mapped, libc.mallinfo2().fordblks)  # free bytes kept in the heap
"""

SIZE = 16 << 20


def _probe(mode: str) -> tuple[int, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env)
    mapped, kept = out.stdout.split()
    return int(mapped), int(kept)


@pytest.mark.skipif(not tune_allocator(), reason="glibc's mallopt is not available here")
def test_freed_blocks_stay_in_the_heap_for_reuse():
    default_mapped, default_kept = _probe("default")
    tuned_mapped, tuned_kept = _probe("tuned")
    # glibc by default maps a 16 MiB block on its own and unmaps it when freed...
    assert default_mapped >= SIZE and default_kept < SIZE
    # ...tuned, the block comes from the heap and is kept there once freed.
    assert tuned_mapped < SIZE and tuned_kept >= SIZE


def test_tuning_twice_is_harmless():
    assert tune_allocator() == tune_allocator()
