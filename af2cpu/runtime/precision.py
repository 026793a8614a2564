"""The one decision of the network's numeric precision for this CPU (``runtime.precision``).

``auto`` (the default) is bf16 where the CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX:
oneDNN's bf16 kernels) *and* does so clearly faster than fp32, fp32 elsewhere. Native units are not
enough: on an Intel Xeon whose oneDNN is kept to AVX512-BF16 (no tiles, as on Intel's CPUs with
AVX512-BF16 and no AMX) a bf16 product runs at 0.62x fp32's speed and the bf16 pass is 9 % slower
than fp32, while AMD's Zen 4 runs bf16 products 2.6x faster and AMX 4-9x (docs/benchmarks.md,
"Precision by CPU"). So where the units exist, the two products' speeds are measured once per CPU
(:func:`bf16_speedup`, a fraction of a second, kept in the user's cache) and bf16 is chosen from
``BF16_SPEEDUP_NEEDED`` up.

An explicit ``bf16`` on a CPU without native units runs as asked, with one warning per run: there
every bf16 matrix product is emulated, measured ~450x slower than fp32 on an AVX2-only AMD EPYC (a
1024² product: 0.2 against 92 GFLOP/s, docs/benchmarks.md).

Everything that needs the precision (the model's Options, the memory and SLURM planners, the ipex
back end, the benchmarks) reads it through :func:`resolve_precision`, by way of
``af2cpu.model.options.as_precision``; the CPU's flags are read once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from af2cpu.config import Precision, cache_dir
from af2cpu.runtime.topology import read_cpuinfo

log = logging.getLogger(__name__)

# ISA flags (/proc/cpuinfo names) with native bf16 matrix instructions that oneDNN uses.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

EMULATED_BF16_COST = (
    "bf16 matrix products are emulated on this CPU (no AVX512-BF16 or AMX): measured ~450x slower than "
    "fp32 on an AVX2-only CPU (1024x1024: 0.2 against 92 GFLOP/s). Use runtime.precision=auto (fp32 here)"
)

# auto takes bf16 where its matrix products are at least this many times as fast as fp32's. Measured
# (docs/benchmarks.md): 0.62x on an Intel Xeon with oneDNN kept to AVX512-BF16 (the bf16 pass 0.92x
# the fp32 one), 2.6x on AMD Zen 4 (pass 1.7x), 4-9x on AMX (pass 2.5x). The margin keeps fp32, the
# more exact of the two, where bf16 would gain little beyond the noise of a busy machine.
BF16_SPEEDUP_NEEDED = 1.25

# The measurement: square products of this size, fp32 and bf16 taking turns, the best of each kept.
SPEEDUP_SIZE = 512
SPEEDUP_ROUNDS = 7

# Set once the warning was given: processes started later (Dask workers) inherit it and stay quiet, so a
# run warns once, in the process the user watches.
WARNED_VARIABLE = "AF2CPU_BF16_EMULATION_WARNED"


# oneDNN runs no kernel above the ISA named in ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA, its older name), a
# cap that HPC sites and benchmarks set: below AVX512_CORE_BF16 its bf16 products are emulated whatever
# the CPU has (0.3 GFLOP/s measured on an AMX Xeon capped to AVX2), below AVX512_CORE_AMX it uses no
# tiles. The caps' names (oneDNN's dnnl_cpu_isa_t), from the lowest, grouped by the bf16 units they allow.
ONEDNN_CAPS_WITHOUT_BF16 = frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                                      "avx512_core_vnni"})
ONEDNN_CAPS_WITHOUT_AMX = frozenset({"avx512_core_bf16", "avx10_1_512", "avx512_core_fp16"})
ONEDNN_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# MKL's own cap (its fp32 products: af2cpu.runtime.products weighs them against oneDNN's), and PyTorch's (its
# kernels, and the vector width of the code inductor generates).
MKL_CAP_VARIABLE = "MKL_ENABLE_INSTRUCTIONS"
ATEN_CAP_VARIABLE = "ATEN_CPU_CAPABILITY"


def onednn_cap(environ=os.environ) -> str | None:
    """oneDNN's ISA cap as set in ``environ`` ("ONEDNN_MAX_CPU_ISA=AVX2"), None without one."""
    name = next((name for name in ONEDNN_CAP_VARIABLES if environ.get(name, "").strip()), None)
    return f"{name}={environ[name].strip()}" if name else None


def onednn_capped(flags: frozenset[str], environ=os.environ) -> frozenset[str]:
    """``flags`` less the bf16 units that oneDNN's ISA cap in ``environ`` forbids it to use (unchanged
    without a cap, or with ALL, DEFAULT or a name oneDNN does not know, which it ignores)."""
    cap = (onednn_cap(environ) or "=").split("=", 1)[1].lower()
    if cap in ONEDNN_CAPS_WITHOUT_BF16:
        return flags - NATIVE_BF16_FLAGS
    if cap in ONEDNN_CAPS_WITHOUT_AMX:
        return flags - {"amx_bf16"}
    return flags


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo) as this process's oneDNN may use them (its ISA cap
    applied: :func:`onednn_capped`), read once per process."""
    return onednn_capped(read_cpuinfo()[1])


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether a CPU with these flags (default: this one) multiplies bf16 matrices natively."""
    return bool(NATIVE_BF16_FLAGS & frozenset(cpu_flags() if flags is None else flags))


def bf16_units(flags: Iterable[str] | None = None) -> str | None:
    """The native bf16 matrix instructions of a CPU with these flags (default: this one): "AMX" (tiles,
    which oneDNN prefers), "AVX512-BF16", or None."""
    flags = frozenset(cpu_flags() if flags is None else flags)
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def cpu_kind() -> str:
    """A short digest of what this process's kernels depend on: the CPU model, its feature flags (oneDNN's cap
    applied), the oneDNN, MKL and PyTorch ISA caps and the torch version. Figures measured here and code
    compiled here (inductor's cache: af2cpu.model.alphafold) are kept per kind, so nodes of other kinds
    sharing a home folder keep their own."""
    model, _ = read_cpuinfo()
    # The installed torch's version from its metadata: importing torch takes a second, which a process
    # that finds a kept figure (the CLI's planning) does not need to spend.
    identity = [model, sorted(cpu_flags()), onednn_cap(), importlib.metadata.version("torch")]
    for variable in (MKL_CAP_VARIABLE, ATEN_CAP_VARIABLE):  # a separate kind only where one is capped
        if os.environ.get(variable, "").strip():
            identity.append(f"{variable}={os.environ[variable].strip()}")
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def kept_file(stem: str) -> Path:
    """Where a measurement of this CPU named ``stem`` is kept in the user's cache, one file per
    :func:`cpu_kind`."""
    return Path(cache_dir("cpu")) / f"{stem}-{cpu_kind()}.json"


def measured_once(stem: str, what: str, measure: Callable[[], dict]) -> float:
    """A speed-up of this CPU, ``measure()['speedup']``, measured once per CPU kind and kept in the user's
    cache (:func:`kept_file`), so that every process of a run, and every later run, takes the same decision;
    a file that cannot be read is measured again, with a warning naming it, one that cannot be written is
    only logged. ``what`` names the figure in the messages ("the bf16 speed-up")."""
    path = kept_file(stem)
    try:
        speedup = float(json.loads(path.read_text())["speedup"])
        if math.isfinite(speedup) and speedup > 0:
            return speedup
        log.warning("%s holds no valid figure for %s (%r): measuring again", path, what, speedup)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s cannot be read (%s): measuring %s again", path, error, what)
    measured = measure()
    log.info("%s here: %s", what, measured)
    try:
        from af2cpu.io import atomic_write_text  # deferred: numpy, not needed by the flags alone

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**measured, "cpu": read_cpuinfo()[0], "onednn_cap": onednn_cap()},
                                           indent=1) + "\n")
    except OSError as error:
        log.info("%s is not kept in %s (%s): this process measured it for itself", what, path, error)
    return measured["speedup"]


def interleaved_times(candidates: dict, rounds: int = 9) -> dict[str, list[float]]:
    """Seconds of each of ``candidates`` (name -> callable) in each of ``rounds`` rounds, after one
    warm-up call each; within a round the candidates take turns, so a shared machine's changing load
    hits all alike (the measured choices and the kernel studies under benchmarks/ compare alternatives
    this way)."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times



def measure_bf16_speedup(size: int = SPEEDUP_SIZE, rounds: int = SPEEDUP_ROUNDS) -> dict[str, float]:
    """GFLOP/s of a ``size``² matrix product in fp32 and in bf16 with this process's threads, the two
    taking turns (a busy machine's load hits both alike), the best of ``rounds`` each; and their ratio.
    Only where bf16 is native: emulated, this takes minutes (ValueError)."""
    if not native_bf16():
        raise ValueError("bf16 is not native on this CPU: its products are emulated, not worth measuring")
    import torch  # deferred: only where bf16 is native and the measurement is due

    operands = {name: (torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype))
                for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    # interleaved_times warms each up first: oneDNN builds its kernel at the first call.
    calls = {name: (lambda a=a, b=b: a @ b) for name, (a, b) in operands.items()}
    best = {name: min(seconds) for name, seconds in interleaved_times(calls, rounds).items()}
    flop = 2 * size**3
    return {"fp32_gflops": round(flop / best["fp32"] / 1e9, 1), "bf16_gflops": round(flop / best["bf16"] / 1e9, 1),
            "speedup": round(best["fp32"] / best["bf16"], 3)}


@functools.lru_cache(maxsize=1)
def bf16_speedup() -> float | None:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (None where bf16 is not
    native), measured once per CPU kind and kept (:func:`measured_once`, ``bf16-speedup-*.json`` under
    af2cpu's cache folder)."""
    if not native_bf16():
        return None
    return measured_once("bf16-speedup", "the bf16 speed-up", lambda: {**measure_bf16_speedup(), "size": SPEEDUP_SIZE})


def resolve_precision(requested: Precision | str, flags: Iterable[str] | None = None,
                      speedup: float | None = None) -> Precision:
    """The precision ``requested`` means on a CPU with ``flags`` (default: this CPU): fp32 or bf16.

    ``auto`` is bf16 where bf16 is native and its products are at least ``BF16_SPEEDUP_NEEDED`` times
    as fast as fp32's (``speedup``; for this CPU by default :func:`bf16_speedup`, measured; for given
    ``flags`` without a ``speedup``, the units alone decide), else fp32. ``bf16`` is kept as asked,
    with one warning per run where it is not native (the cost) or measured slower than fp32.
    ConfigError for a name that is no precision.
    """
    precision = Precision.parse(requested, f"precision {requested!r}")
    native = native_bf16(flags)
    if precision is Precision.auto:
        if not native:
            return Precision.fp32
        if speedup is None and flags is None:
            speedup = bf16_speedup()
        return Precision.bf16 if speedup is None or speedup >= BF16_SPEEDUP_NEEDED else Precision.fp32
    if precision is Precision.bf16 and not os.environ.get(WARNED_VARIABLE):
        if not native:
            os.environ[WARNED_VARIABLE] = "1"
            log.warning("runtime.precision=bf16: %s.", EMULATED_BF16_COST)
        else:
            if speedup is None and flags is None:
                speedup = bf16_speedup()
            if speedup is not None and speedup < 1:
                os.environ[WARNED_VARIABLE] = "1"
                log.warning("runtime.precision=bf16: this CPU's native bf16 matrix products were measured at %.2fx "
                            "the speed of fp32's, so bf16 runs slower than fp32 here and less exactly. Use "
                            "runtime.precision=auto (fp32 here)", speedup)
    return precision


def planning_precisions(requested: Precision | str, elsewhere: bool) -> tuple[Precision, ...]:
    """The precisions a run of ``requested`` may take, for planning its memory. ``auto`` on other machines
    than this one (a SLURM array task, a dask-jobqueue worker, an attached scheduler's workers) resolves
    on their CPUs, which may lack native bf16: both fp32 and bf16 (fp32 needs about twice the
    activations); otherwise the one precision it resolves to here."""
    if elsewhere and Precision(str(requested)) is Precision.auto:
        return (Precision.fp32, Precision.bf16)
    return (resolve_precision(requested),)
