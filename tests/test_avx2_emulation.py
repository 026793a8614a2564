"""scripts/avx2only/run: af2cpu and every library under it see an AVX2-only CPU (CPUID faulting).

On a CPU with AVX512 this is how the project checks what an AVX2-only machine does (`make test-avx2`,
and the AVX2 figures of docs/benchmarks.md); here one process shows that PyTorch, oneDNN, NumPy's
OpenBLAS and af2cpu's own reading of /proc/cpuinfo all see AVX2 only, that `runtime.precision=auto`
then takes fp32 without measuring bf16, and that a real crash still crashes. Where the CPU or the
kernel cannot fault on CPUID, the script must refuse, saying so, rather than run unmasked.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "scripts" / "avx2only" / "run"

PROBE = """
import json, os
import numpy, torch
from af2cpu.runtime import precision
from af2cpu.runtime.topology import read_cpuinfo
with open("/proc/cpuinfo") as f:
    proc_flags = next(line for line in f if line.startswith("flags")).split()
print(json.dumps({
    "torch": torch.backends.cpu.get_cpu_capability(),
    "af2cpu_flags": sorted(read_cpuinfo()[1]),
    "proc_flags": proc_flags,
    "auto": precision.resolve_precision("auto"),
    "numpy_avx512": numpy._core._multiarray_umath.__cpu_features__["AVX512F"],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
}))
"""


def _faulting() -> bool:
    return "cpuid_fault" in Path("/proc/cpuinfo").read_text().split()


def _run(tmp_path, *argv):
    """The command under the script, or None once the script's refusal (no CPUID faulting) is checked."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "AF2CPU_CPUID_TRACE": "1"}
    proc = subprocess.run([str(RUN), *argv], check=False, env=env, capture_output=True, text=True, timeout=300)
    if _faulting():
        return proc
    assert proc.returncode == 3, proc.stderr
    assert "no CPUID faulting" in proc.stderr and "AVX2-only machine" in proc.stderr
    return None


def test_the_emulated_cpu_is_avx2_only_for_every_library_and_for_af2cpu(tmp_path):
    proc = _run(tmp_path, sys.executable, "-c", PROBE)
    if proc is None:
        return
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["torch"] == "AVX2"
    for flags in (seen["af2cpu_flags"], seen["proc_flags"]):
        assert "avx2" in flags and "fma" in flags
        assert not [f for f in flags if f.startswith(("avx512", "amx", "avx10", "avx_vnni"))]
    assert seen["numpy_avx512"] is False
    assert seen["auto"] == "fp32"
    assert "--xla_cpu_max_isa=AVX2" in seen["xla_flags"]
    # the library answered the CPUID instructions itself, and no bf16 speed-up was measured and kept
    assert "CPUID instructions answered as an AVX2-only CPU" in proc.stderr
    assert not (tmp_path / "cache" / "af2cpu" / "cpu").exists()


def test_a_real_crash_under_the_emulation_still_crashes(tmp_path):
    """The SIGSEGV handler answers CPUID faults only: Python's faulthandler still reports a real one."""
    proc = _run(tmp_path, sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    if proc is None:
        return
    assert proc.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in proc.stderr
