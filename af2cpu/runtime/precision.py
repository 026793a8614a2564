"""The one decision of the network's numeric precision for this CPU (``runtime.precision``).

``auto`` (the default) is bf16 where the CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX:
oneDNN's bf16 kernels), fp32 elsewhere. An explicit ``bf16`` on a CPU without them runs as asked,
with one warning per run: there every bf16 matrix product is emulated, measured ~450x slower
than fp32 on an AVX2-only AMD EPYC (a 1024² product: 0.2 against 92 GFLOP/s, docs/benchmarks.md).

Everything that needs the precision (the model's Options, the memory and SLURM planners, the ipex
back end, the benchmarks) reads it through :func:`resolve_precision`, by way of
``af2cpu.model.options.as_precision``; the CPU's flags are read once per process.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable

from af2cpu.config import Precision
from af2cpu.errors import ConfigError
from af2cpu.runtime.topology import read_cpuinfo

log = logging.getLogger(__name__)

# ISA flags (/proc/cpuinfo names) with native bf16 matrix instructions that oneDNN uses.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

EMULATED_BF16_COST = (
    "bf16 matrix products are emulated on this CPU (no AVX512-BF16 or AMX): measured ~450x slower than "
    "fp32 on an AVX2-only CPU (1024x1024: 0.2 against 92 GFLOP/s). Use runtime.precision=auto (fp32 here)"
)

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


def resolve_precision(requested: Precision | str, flags: Iterable[str] | None = None) -> Precision:
    """The precision ``requested`` means on a CPU with ``flags`` (default: this CPU): fp32 or bf16.

    ``auto`` is bf16 where bf16 is native, else fp32; ``bf16`` where it is not is kept, with one
    warning per process giving the cost. ConfigError for a name that is no precision.
    """
    try:
        precision = Precision(str(requested))
    except ValueError:
        raise ConfigError(f"precision {requested!r} is not available; choose one of "
                          f"{', '.join(p.value for p in Precision)}") from None
    native = native_bf16(flags)
    if precision is Precision.auto:
        return Precision.bf16 if native else Precision.fp32
    if precision is Precision.bf16 and not native and not os.environ.get(WARNED_VARIABLE):
        os.environ[WARNED_VARIABLE] = "1"
        log.warning("runtime.precision=bf16: %s.", EMULATED_BF16_COST)
    return precision


def planning_precisions(requested: Precision | str, elsewhere: bool) -> tuple[Precision, ...]:
    """The precisions a run of ``requested`` may take, for planning its memory. ``auto`` on other machines
    than this one (a SLURM array task, a dask-jobqueue worker, an attached scheduler's workers) resolves
    on their CPUs, which may lack native bf16: both fp32 and bf16 (fp32 needs about twice the
    activations); otherwise the one precision it resolves to here."""
    if elsewhere and Precision(str(requested)) is Precision.auto:
        return (Precision.fp32, Precision.bf16)
    return (resolve_precision(requested),)
