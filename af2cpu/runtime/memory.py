"""The memory planner: peak memory of one AlphaFold2 forward pass, and chunk sizes that fit a limit.

Notation: L residues, S MSA rows (clustered), Se extra-MSA rows, T templates, b bytes per activation
(4 for fp32, 2 for bf16), c a chunk size (None = the whole axis). Channel sizes are AlphaFold2's:
MSA 256, pair 128, extra MSA 64, template pair 64, outer-product 32; heads 8 (MSA, extra MSA) and 4
(triangle attention). Attention logits are counted as the per-chunk (c, H, Q, K) mask+bias tensor
the attention kernel receives, at b bytes.

    peak = fixed + max over phases (resident(phase) + max over the phase's intermediates)

fixed        = runtime (PyTorch and libraries, RUNTIME_OVERHEAD)
             + parameters (N_PARAMS · 4: fp32 master weights, also in bf16 runs)
             + input features (S·L·49·4 + Se·L·25·4)
             + recycled state (L²·128·4 + L·256·4 + L·37·3·4)
resident     templates: 2·L²·128·b + S·L·256·b + T·L²·64·b
             extra_msa: 2·L²·128·b + S·L·256·b + 2·Se·L·64·b
             evoformer: 2·L²·128·b + 2·S·L·256·b
             heads:     L²·128·b + S·L·256·b
intermediates (each counted with the module's own input, output and concatenation copies)
  MSA row attention        c·(5·L·256 + 8·L²)·b + 3·S·L·256·b + 8·L²·b      c ≤ S rows
  MSA column attention     c·(5·S·256 + 8·S²)·b + 3·S·L·256·b               c ≤ L columns
  extra MSA row attention  c·(5·L·64 + 8·L²)·b + 3·Se·L·64·b + 8·L²·b       c ≤ Se rows
  extra column global att. c·Se·64·4·b + 3·Se·L·64·b                        c ≤ L columns
  outer product mean       2·R·L·32·b + 2·c·L·32·32·b + 2·L²·128·b + L²·4   R = S or Se, c ≤ L
  MSA transition           2·c·L·4·C·b + 2·R·L·C·b                          C = 256 or 64, c ≤ R
  triangle attention       c·(5·L·C + H·L²)·b + 3·L²·C·b + H·L²·b           C = 128, H = 4, c ≤ L
  triangle multiplication  7·L²·C·b + c·L·C·b                               (not reduced by chunks)
  pair transition          2·c·L·4·C·b + 2·L²·C·b                           c ≤ L
  template features        L²·88·4 + 2·L²·64·b                              one template at a time
  template point attention c·T·64·4·b + 3·L²·128·b                          c ≤ L² pairs
  heads                    2·L²·64·4 (distogram) + L²·64·4 (PAE) + S·L·23·4 + 3·12·L²·4 (IPA)

The template pair stack uses the triangle and transition terms with C = 64 (transition factor 2).
The coefficients count the tensors af2cpu.model allocates; they are to be calibrated against measured
peak RSS (`af2cpu bench`), which is why they live in named constants.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.model.options import ChunkSizes

GIB = 1 << 30
N_PARAMS = 93_000_000
# Calibrated against peak RSS of one 48-block pass (docs/benchmarks.md, "Memory planner"): at
# L=64/128 the measured peak exceeded the estimate by a nearly constant 0.2-0.3 GiB with 512 MiB here.
RUNTIME_OVERHEAD = 768 << 20
C_M, C_Z, C_E, C_T, C_OPM = 256, 128, 64, 64, 32
H_MSA, H_EXTRA, H_TRI, H_IPA = 8, 8, 4, 12
FP32 = 4

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryPlanError(Af2CpuError):
    """A target cannot fit the memory limit even with the smallest chunks."""


def parse_memory_limit(value: str | int, available: Callable[[], int] | None = None) -> int:
    """Bytes from `runtime.memory_limit`: "auto" (available memory), a byte count, or "16G" / "512MiB"
    / "1.5T" (binary units, as SLURM and Docker read them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    else:
        text = str(value).strip()
        if text.lower() == "auto":
            if available is None:
                from af2cpu.runtime.topology import available_memory as available
            return available()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.upper())
        if not match:
            raise ConfigError(
                f"runtime.memory_limit={value!r} is not a size; write auto, a number of bytes, or e.g. 16G"
            )
        amount = int(float(match.group(1)) * _UNITS[match.group(2)])
    if amount <= 0:
        raise ConfigError(f"runtime.memory_limit={value!r} must be positive")
    return amount


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory and what it is made of."""

    total: int
    fixed: dict[str, int]
    phase: str  # the phase whose peak is the overall peak
    resident: int  # representations alive during that phase
    largest: tuple[str, int]  # the phase's largest intermediate

    def describe(self) -> str:
        fixed = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.fixed.items())
        return (
            f"{self.total / GIB:.2f} GiB at the {self.phase} stage: fixed {fixed}; representations "
            f"{self.resident / GIB:.2f}; largest intermediate {self.largest[0]} {self.largest[1] / GIB:.2f} GiB"
        )


@dataclass(frozen=True)
class _Term:
    name: str
    chunk_field: str | None  # the ChunkSizes field that bounds it, None if chunks do not help
    nbytes: int


def _eff(c: int | None, axis: int) -> int:
    return axis if c is None else max(1, min(c, axis))


def _pair_stack_terms(prefix: str, L: int, C: int, transition_factor: int, b: int, ch: ChunkSizes) -> list[_Term]:
    ta = _eff(ch.triangle_attention, L)
    tm = _eff(ch.triangle_multiplication, L)
    tr = _eff(ch.transition, L)
    return [
        _Term(f"{prefix}triangle attention", "triangle_attention",
              ta * (5 * L * C + H_TRI * L * L) * b + 3 * L * L * C * b + H_TRI * L * L * b),
        _Term(f"{prefix}triangle multiplication", "triangle_multiplication", 7 * L * L * C * b + tm * L * C * b),
        _Term(f"{prefix}pair transition", "transition",
              2 * tr * L * transition_factor * C * b + 2 * L * L * C * b),
    ]


def _phases(L: int, S: int, Se: int, T: int, b: int, ch: ChunkSizes) -> dict[str, tuple[int, list[_Term]]]:
    pair = L * L * C_Z * b
    msa = S * L * C_M * b
    extra = Se * L * C_E * b
    phases: dict[str, tuple[int, list[_Term]]] = {}
    if T:
        pa = _eff(ch.template_attention, L * L)
        phases["templates"] = (
            2 * pair + msa + T * L * L * C_T * b,
            _pair_stack_terms("template ", L, C_T, 2, b, ch) + [
                _Term("template features", None, L * L * 88 * FP32 + 2 * L * L * C_T * b),
                _Term("template point attention", "template_attention",
                      pa * T * C_T * 4 * b + 3 * L * L * C_Z * b),
            ],
        )
    if Se:
        rows = _eff(ch.msa_row_attention, Se)
        cols = _eff(ch.msa_column_attention, L)
        opm = _eff(ch.outer_product_mean, L)
        tr = _eff(ch.transition, Se)
        phases["extra_msa"] = (
            2 * pair + msa + 2 * extra,
            [
                _Term("extra MSA row attention", "msa_row_attention",
                      rows * (5 * L * C_E + H_EXTRA * L * L) * b + 3 * extra + H_EXTRA * L * L * b),
                _Term("extra MSA column global attention", "msa_column_attention",
                      cols * Se * C_E * 4 * b + 3 * extra),
                _Term("extra outer product mean", "outer_product_mean",
                      2 * Se * L * C_OPM * b + 2 * opm * L * C_OPM * C_OPM * b + 2 * pair + L * L * FP32),
                _Term("extra MSA transition", "transition", 2 * tr * L * 4 * C_E * b + 2 * extra),
            ] + _pair_stack_terms("", L, C_Z, 4, b, ch),
        )
    rows = _eff(ch.msa_row_attention, S)
    cols = _eff(ch.msa_column_attention, L)
    opm = _eff(ch.outer_product_mean, L)
    tr = _eff(ch.transition, S)
    phases["evoformer"] = (
        2 * pair + 2 * msa,
        [
            _Term("MSA row attention", "msa_row_attention",
                  rows * (5 * L * C_M + H_MSA * L * L) * b + 3 * msa + H_MSA * L * L * b),
            _Term("MSA column attention", "msa_column_attention",
                  cols * (5 * S * C_M + H_MSA * S * S) * b + 3 * msa),
            _Term("outer product mean", "outer_product_mean",
                  2 * S * L * C_OPM * b + 2 * opm * L * C_OPM * C_OPM * b + 2 * pair + L * L * FP32),
            _Term("MSA transition", "transition", 2 * tr * L * 4 * C_M * b + 2 * msa),
        ] + _pair_stack_terms("", L, C_Z, 4, b, ch),
    )
    phases["heads"] = (
        pair + msa,
        [_Term("heads and structure module", None,
               3 * L * L * 64 * FP32 + S * L * 23 * FP32 + 3 * H_IPA * L * L * FP32)],
    )
    return phases


def _fixed(L: int, S: int, Se: int, b: int) -> dict[str, int]:
    return {
        "runtime": RUNTIME_OVERHEAD,
        # The parameters stay fp32 in bf16 runs too: each weight is cast where it is used.
        "parameters": N_PARAMS * FP32,
        "features": S * L * 49 * FP32 + Se * L * 25 * FP32,
        "recycling": L * L * C_Z * FP32 + L * C_M * FP32 + L * 37 * 3 * FP32,
    }


def _check_shape(length: int, msa_rows: int, extra_rows: int, templates: int, precision_bytes: int) -> None:
    if length < 1 or msa_rows < 1 or extra_rows < 0 or templates < 0:
        raise ConfigError(
            f"memory estimate needs length ≥ 1, MSA rows ≥ 1, extra rows ≥ 0 and templates ≥ 0; got "
            f"L={length}, S={msa_rows}, Se={extra_rows}, T={templates}"
        )
    if precision_bytes not in (2, 4):
        raise ConfigError(f"precision_bytes must be 2 (bf16) or 4 (fp32), not {precision_bytes}")


def _estimate(L, S, Se, T, b, chunks) -> tuple[MemoryEstimate, _Term]:
    fixed = _fixed(L, S, Se, b)
    best: tuple[MemoryEstimate, _Term] | None = None
    for phase, (resident, terms) in _phases(L, S, Se, T, b, chunks).items():
        top = max(terms, key=lambda t: t.nbytes)
        total = sum(fixed.values()) + resident + top.nbytes
        if best is None or total > best[0].total:
            best = (MemoryEstimate(total, fixed, phase, resident, (top.name, top.nbytes)), top)
    return best


def estimate_peak_memory(
    length: int,
    msa_rows: int,
    extra_rows: int,
    templates: int,
    precision_bytes: int,
    chunks: ChunkSizes | None = None,
) -> MemoryEstimate:
    """Predicted peak bytes of one forward pass (one recycle) with the given chunk sizes; see the
    module docstring for the formula."""
    _check_shape(length, msa_rows, extra_rows, templates, precision_bytes)
    return _estimate(length, msa_rows, extra_rows, templates, precision_bytes, chunks or ChunkSizes())[0]


def _axis(field: str, L: int, S: int, Se: int) -> int:
    """The longest axis a chunk field slices (its value beyond that changes nothing)."""
    return {
        "msa_row_attention": max(S, Se),
        "msa_column_attention": L,
        "triangle_attention": L,
        "template_attention": L * L,
        "outer_product_mean": L,
        "triangle_multiplication": L,
        "transition": max(S, Se, L),
    }[field]


def choose_chunks(
    limit: int, length: int, msa_rows: int, extra_rows: int, templates: int, precision_bytes: int
) -> tuple[ChunkSizes, MemoryEstimate]:
    """The largest chunk sizes (powers of two, or unchunked) whose estimated peak fits `limit`.

    Starting unchunked, the chunk size of the largest intermediate at the peak is halved until the
    estimate fits. Raises MemoryPlanError with the numbers when the smallest chunks do not fit.
    """
    _check_shape(length, msa_rows, extra_rows, templates, precision_bytes)
    L, S, Se, T, b = length, msa_rows, extra_rows, templates, precision_bytes
    chunks = ChunkSizes()
    while True:
        estimate, top = _estimate(L, S, Se, T, b, chunks)
        if estimate.total <= limit:
            return chunks, estimate
        field = top.chunk_field
        if field is not None:
            # Chunks help only if the smallest chunk brings this intermediate under the limit.
            floor, floor_top = _estimate(L, S, Se, T, b, replace(chunks, **{field: 1}))
            if floor.total > limit and floor_top.name == top.name:
                estimate, field = floor, None
        if field is None:
            raise MemoryPlanError(
                f"a target of {L} residues with {S} MSA rows, {Se} extra MSA rows and {T} templates "
                f"needs {estimate.describe()}, and chunking cannot make {top.name} small enough; the "
                f"memory limit is {limit / GIB:.2f} GiB. Use runtime.precision=bf16, fewer MSA rows, "
                "or more memory (runtime.memory_limit)"
            )
        current = getattr(chunks, field) or _axis(field, L, S, Se)
        smaller = 1 << ((current - 1).bit_length() - 1)  # the largest power of two below `current`
        chunks = replace(chunks, **{field: smaller})

