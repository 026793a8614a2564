"""The memory planner: peak memory of one AlphaFold2 forward pass, and chunk sizes that fit a limit.

Notation: L residues, S MSA rows (clustered), Se extra-MSA rows, T templates, b bytes per activation
(4 for fp32, 2 for bf16), c a chunk size (None = the whole axis). Channel sizes are AlphaFold2's:
MSA 256, pair 128, extra MSA 64, template pair 64, outer-product 32; heads 8 (MSA, extra MSA) and 4
(triangle attention).

    peak = fixed + max over phases (resident(phase) + max over the phase's intermediates)

fixed        = runtime (PyTorch and libraries, RUNTIME_OVERHEAD)
             + parameters (N_PARAMS · 4: fp32 master weights, also in bf16 runs)
             + input features (S·L·49·4 + Se·L·25·4)
             + recycled state (L²·128·4 + L·256·4 + L·37·3·4)
resident     templates: 2·L²·128·b + S·L·256·b + T·L²·64·b
             extra_msa: 2·L²·128·b + S·L·256·b + 2·Se·L·64·b
             evoformer: 2·L²·128·b + 2·S·L·256·b
             heads:     L²·128·b + S·L·256·b
intermediates (each counted with the module's own input copies and output; st = rows per step,
the chunk size cut to the cache block, see af2cpu.model.options.Options.step_rows)
  MSA row attention        2·R·L·C·b + L²·128·b + 2·H·L²·b + st·(6·L·C + H·L²)·b   (R, C) = (S, 256) or
  MSA column attention     2·R·L·C·b + st·7·R·C·b                              (Se, 64), H = 8
  extra column global att. st·Se·64·4·b + 3·Se·L·64·b
  outer product mean       R·L·C·b + 4·R·L·32·b + L²·128·b + L²·4 + 2·st·L·32·32·b
  MSA transition           R·L·C·b + st·5·L·C·b
  triangle attention       2·L²·C·b + 2·H·L²·b + st·(7·L·C + H·L²)·b           C = 128, H = 4
  triangle multiplication  5·L²·C·b + 7·st·L·C·b + pt·L·C·b   pt: the triangle sums' rows (≥ 64)
  embeddings               6·st·L·128·4 (fp32, a block of rows at a time) with the embedded MSA,
                           extra MSA and pair resident
  pair transition          L²·C·b + st·5·L·C·b
  template features        L²·88·4 + 2·L²·64·b                              one template at a time
  template point attention c·T·64·4·b + 3·L²·128·b                          c ≤ L² pairs
  heads                    2·L²·64·4 (distogram) + L²·64·4 (PAE) + S·L·23·4 + 3·12·L²·4 (IPA)

Attention logits never exist whole: the attention kernel computes them block by block, the pair
bias is read through a broadcast view, and only batch rows with masked keys get a materialised
bias (the H·L² per step terms, an upper bound). With the default cache blocks (a few MiB per
step) the per-step terms are small and the whole-tensor terms set the peak, so chunk sizes
matter only when cache blocking is turned off (``block_bytes=None``).
The template pair stack uses the triangle and transition terms with C = 64 (transition factor 2).
The coefficients count the tensors af2cpu.model allocates; they are to be calibrated against measured
peak RSS (`af2cpu bench`), which is why they live in named constants.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.model.options import ChunkSizes, Options, embedding_step_rows, triangle_product_rows

GIB = 1 << 30
DEFAULT_BLOCK_BYTES = Options().block_bytes
N_PARAMS = 93_000_000
# Calibrated against measured peak RSS (`af2cpu bench --memory`, docs/benchmarks.md, "Memory"):
# a process holding torch, af2cpu and the inputs measured 0.32 GiB besides the weights; a Dask
# worker imports a little more.
RUNTIME_OVERHEAD = 384 << 20
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


def _step(chunk: int | None, axis: int, row_bytes: int, block: int | None) -> int:
    """Rows per step of a row loop: the model's own rule, Options.step_rows."""
    return Options(block_bytes=block).step_rows(chunk, axis, row_bytes)


def _pair_stack_terms(prefix: str, L: int, C: int, transition_factor: int, b: int, ch: ChunkSizes,
                      block: int | None) -> list[_Term]:
    ta = _step(ch.triangle_attention, L, L * 4 * C * b, block)
    tm = _step(ch.triangle_multiplication, L, L * 4 * C * b, block)
    tp = triangle_product_rows(tm, L, ch.triangle_multiplication)
    tr = _step(ch.transition, L, L * transition_factor * C * b, block)
    return [
        _Term(f"{prefix}triangle attention", "triangle_attention",
              2 * L * L * C * b + 2 * H_TRI * L * L * b + ta * (L * 7 * C + H_TRI * L * L) * b),
        _Term(f"{prefix}triangle multiplication", "triangle_multiplication",
              5 * L * L * C * b + tm * 7 * L * C * b + tp * L * C * b),
        _Term(f"{prefix}pair transition", "transition", L * L * C * b + tr * L * (1 + transition_factor) * C * b),
    ]


def _msa_terms(prefix: str, L: int, R: int, C: int, heads: int, b: int, ch: ChunkSizes, block: int | None,
               pair: int, global_column: bool) -> list[_Term]:
    """The MSA modules of a block on R rows of C channels (the Evoformer's or the extra stack's)."""
    act = R * L * C * b
    rows = _step(ch.msa_row_attention, R, L * 4 * C * b, block)
    cols = _step(ch.msa_column_attention, L, R * 4 * C * b, block)
    opm = _step(ch.outer_product_mean, L, L * C_OPM * C_OPM * b, block)
    tr = _step(ch.transition, R, L * 4 * C * b, block)
    if global_column:
        column = _Term(f"{prefix}MSA column global attention", "msa_column_attention",
                       cols * R * C * 4 * b + 3 * act)
    else:
        column = _Term(f"{prefix}MSA column attention", "msa_column_attention", 2 * act + cols * R * 7 * C * b)
    return [
        _Term(f"{prefix}MSA row attention", "msa_row_attention",
              2 * act + pair + 2 * heads * L * L * b + rows * (L * 6 * C + heads * L * L) * b),
        column,
        _Term(f"{prefix}outer product mean", "outer_product_mean",
              act + 4 * R * L * C_OPM * b + pair + L * L * FP32 + 2 * opm * L * C_OPM * C_OPM * b),
        _Term(f"{prefix}MSA transition", "transition", act + tr * L * 5 * C * b),
    ]


def _phases(L: int, S: int, Se: int, T: int, b: int, ch: ChunkSizes,
            block: int | None) -> dict[str, tuple[int, list[_Term]]]:
    pair = L * L * C_Z * b
    msa = S * L * C_M * b
    extra = Se * L * C_E * b
    phases: dict[str, tuple[int, list[_Term]]] = {
        # The embedders work in fp32 whatever the trunk's precision, a block of rows at a time: the
        # input embedding's pair, the relative positions, the recycled pair's layer norm and
        # distogram projection, and their sums, cast into the trunk's dtype block by block.
        "embeddings": (msa + extra + pair,
                       [_Term("embeddings and recycling", None,
                              6 * min(L, embedding_step_rows(L * C_Z * FP32)) * L * C_Z * FP32)]),
    }
    if T:
        pa = _eff(ch.template_attention, L * L)
        phases["templates"] = (
            2 * pair + msa + T * L * L * C_T * b,
            _pair_stack_terms("template ", L, C_T, 2, b, ch, block) + [
                _Term("template features", None, L * L * 88 * FP32 + 2 * L * L * C_T * b),
                _Term("template point attention", "template_attention",
                      pa * T * C_T * 4 * b + 3 * L * L * C_Z * b),
            ],
        )
    if Se:
        phases["extra_msa"] = (
            2 * pair + msa + 2 * extra,
            _msa_terms("extra ", L, Se, C_E, H_EXTRA, b, ch, block, pair, global_column=True)
            + _pair_stack_terms("", L, C_Z, 4, b, ch, block),
        )
    phases["evoformer"] = (
        2 * pair + 2 * msa,
        _msa_terms("", L, S, C_M, H_MSA, b, ch, block, pair, global_column=False)
        + _pair_stack_terms("", L, C_Z, 4, b, ch, block),
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


def _estimate(L, S, Se, T, b, chunks, block) -> tuple[MemoryEstimate, _Term]:
    fixed = _fixed(L, S, Se, b)
    best: tuple[MemoryEstimate, _Term] | None = None
    for phase, (resident, terms) in _phases(L, S, Se, T, b, chunks, block).items():
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
    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
) -> MemoryEstimate:
    """Predicted peak bytes of one forward pass (one recycle) with the given chunk sizes and cache
    blocks (``Options.block_bytes``); see the module docstring for the formula."""
    _check_shape(length, msa_rows, extra_rows, templates, precision_bytes)
    return _estimate(length, msa_rows, extra_rows, templates, precision_bytes, chunks or ChunkSizes(),
                     block_bytes)[0]


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
    limit: int, length: int, msa_rows: int, extra_rows: int, templates: int, precision_bytes: int,
    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
) -> tuple[ChunkSizes, MemoryEstimate]:
    """The largest chunk sizes (powers of two, or unchunked) whose estimated peak fits `limit`.

    Starting unchunked, the chunk size of the largest intermediate at the peak is halved until the
    estimate fits. Raises MemoryPlanError with the numbers when the smallest chunks do not fit.
    """
    _check_shape(length, msa_rows, extra_rows, templates, precision_bytes)
    L, S, Se, T, b = length, msa_rows, extra_rows, templates, precision_bytes
    chunks = ChunkSizes()
    while True:
        estimate, top = _estimate(L, S, Se, T, b, chunks, block_bytes)
        if estimate.total <= limit:
            return chunks, estimate
        field = top.chunk_field
        if field is not None:
            # Chunks help only if the smallest chunk brings this intermediate under the limit.
            floor, floor_top = _estimate(L, S, Se, T, b, replace(chunks, **{field: 1}), block_bytes)
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

