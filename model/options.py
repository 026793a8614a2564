"""Runtime options of the network: one small frozen object handed to every module.

The model code never reads environment variables or global state; whoever runs the network (the
CLI, a scheduler task, a test) builds one :class:`Options` and gives it to
:meth:`af2cpu.model.alphafold.AlphaFold.set_options`, which hands it to every module. Chunk sizes
bound the memory of the large intermediates: ``None`` computes a tensor in one piece, an integer
computes it in slices of that many rows along a batch-like axis. Chunked and unchunked results are
equal (tests/test_model_trunk.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from af2cpu.config import AttentionKernel, Fp32Products, Precision
from af2cpu.errors import ConfigError
from af2cpu.runtime.precision import resolve_precision
from af2cpu.runtime.products import as_products, resolve_products


def as_precision(value: Precision | str) -> Precision:
    """``value`` as the :class:`~af2cpu.config.Precision` it means on this CPU (its name as a string is
    fine; ``auto`` resolved by af2cpu.runtime.precision); ConfigError for any other value."""
    return resolve_precision(value)


# The embedders compute in fp32 a block of rows at a time (EmbeddingsAndEvoformer._embed_pair, _embed_msa,
# _embed_extra_msa, the template features): this many bytes per fp32 intermediate, whatever the trunk's
# cache blocking or compilation.
EMBEDDING_BLOCK_BYTES = 4 << 20


def embedding_step_rows(row_bytes: int) -> int:
    """Rows per block of the embeddings, for ``row_bytes`` fp32 bytes per row."""
    return max(1, EMBEDDING_BLOCK_BYTES // max(1, row_bytes))


# Triangle attention normalises its pair whole up to this size (one layer norm, faster at normal lengths:
# 6 % of a bf16 pass at L=128), above it a block of rows at a time as the attention reads it. The extra
# MSA's column global attention runs whole up to this size, above it blocks of columns of about this
# size (Options.norm_block_rows).
WHOLE_NORM_BYTES = 64 << 20


def normalised_whole(nbytes: int) -> bool:
    """Whether an input of ``nbytes`` bytes is layer-normalised whole (one step) rather than a block at a
    time: at most ``WHOLE_NORM_BYTES``. The one rule of the attentions (evoformer._normed_or_blocks), the
    column global attention (Options.norm_block_rows) and the memory planner."""
    return nbytes <= WHOLE_NORM_BYTES

# The structure module keeps its layer-normed fp32 pair whole for its eight iterations up to this size
# (one layer norm); above it, it normalises a block of rows at a time where the pair is read (no fp32
# pair-sized copy at long lengths, at the cost of a layer norm per iteration).
STRUCTURE_WHOLE_PAIR_BYTES = 256 << 20

# The triangle multiplication's triangle sums are c batched GEMMs whose M is the rows of a step; with
# fewer rows they are too flat to run fast (one module's sums at L=320, bf16, on AVX512-BF16: 70 ms with
# 12 rows a step, 31 ms with 64), so they take at least this many rows even when the cache step is smaller.
TRIANGLE_PRODUCT_ROWS = 64


def triangle_product_rows(step: int, total: int, chunk: int | None) -> int:
    """Output rows per batched GEMM of the triangle sums: the cache ``step``, raised to
    ``TRIANGLE_PRODUCT_ROWS``, within the memory ``chunk`` and the ``total``."""
    return max(1, min(total, total if chunk is None else chunk, max(step, TRIANGLE_PRODUCT_ROWS)))


@dataclass(frozen=True)
class ChunkSizes:
    """Rows per slice for each kind of large intermediate; ``None`` means unchunked."""

    msa_row_attention: int | None = None  # MSA rows (sequences) per slice
    msa_column_attention: int | None = None  # MSA columns (residues) per slice, also global attention
    triangle_attention: int | None = None  # pair rows per slice
    template_attention: int | None = None  # residue pairs per slice of the point-wise attention
    outer_product_mean: int | None = None  # residues (left index) per slice
    triangle_multiplication: int | None = None  # output rows per slice
    # Intermediate channels per slab of the triangle multiplication: its projections and triangle sums
    # are computed a slab of channels at a time (the input layer norm recomputed per block of rows),
    # so neither the normalised pair nor all projections exist whole, only the (c, L, L) sums.
    triangle_channels: int | None = None
    transition: int | None = None  # leading rows per slice

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"chunk size {name}={value!r} must be a positive integer or None")


@dataclass(frozen=True)
class Options:
    """How the network runs: chunk sizes, numeric precision, and compilation.

    ``precision="bf16"`` runs the trunk (embeddings, template, extra-MSA and Evoformer stacks) on
    bf16 activations, each weight cast to bf16 once and kept (``keep_weights``; the fp32 parameters stay);
    layer-norm statistics, softmax accumulation, mask counts, the structure module and the heads stay fp32,
    as in AlphaFold2. ``compile=True`` runs each repeated block (Evoformer and extra-MSA) through
    ``torch.compile`` (inductor) with dynamic shapes, caching the compiled code in ``compile_cache_dir`` when
    given.
    """

    chunks: ChunkSizes = field(default_factory=ChunkSizes)
    precision: Precision = Precision.fp32  # a string naming one ("bf16", "auto") is taken too; auto is resolved
    compile: bool = False
    compile_cache_dir: str | None = None  # inductor's persistent cache (TORCHINDUCTOR_CACHE_DIR)
    # Cache blocking: the row-wise loops (attention, transitions, outer product mean, the triangle
    # multiplication's output) take as many rows per step as keep that step's largest
    # intermediate near this size, so it is reused from cache instead of streamed through
    # memory. Independent of `chunks` (which bound peak memory); None processes whole tensors,
    # and so do compiled blocks (see step_rows).
    block_bytes: int | None = 4 << 20
    # Outputs for very long sequences (the memory planner sets it when the full outputs do not fit the
    # limit, af2cpu.model.memory.choose_chunks): AlphaFold.predict then keeps no (L, L, bins) arrays (the
    # distogram and PAE logits, the aligned-confidence probabilities) and no pair or MSA representation;
    # PAE, pTM and ipTM are computed from the PAE logits a block of rows at a time.
    compact_outputs: bool = False
    # The library of the fp32 matrix products (af2cpu.runtime.products): PyTorch's MKL, oneDNN, or auto (oneDNN
    # where this CPU runs it measurably faster: MKL's paths on AMD CPUs), decided where the network runs
    # (onednn_products), not where it is planned.
    fp32_products: Fp32Products = Fp32Products.mkl
    # The attention kernel (af2cpu.model.kernels): PyTorch's, af2cpu's own, or auto (af2cpu's where this CPU
    # runs it measurably faster, per precision and head size), decided where the network runs.
    attention: AttentionKernel = AttentionKernel.pytorch
    # The kernels of the element-wise work, the layer norms, gates and bf16 residual sums (af2cpu.model.kernels),
    # chosen the same way (one measurement per precision).
    elementwise: AttentionKernel = AttentionKernel.pytorch
    # bf16 runs keep each weight's bf16 cast (af2cpu.model.primitives.kept_weight: the parameters' size in bf16,
    # counted by the memory planner) instead of casting it at every product. Off only to measure what it gains.
    keep_weights: bool = True

    def __post_init__(self):
        if self.block_bytes is not None and (not isinstance(self.block_bytes, int) or self.block_bytes < 1):
            raise ConfigError(f"block_bytes={self.block_bytes!r} must be a positive number of bytes or None")
        # frozen: the coerced value is set the way dataclasses set fields.
        object.__setattr__(self, "precision", as_precision(self.precision))
        object.__setattr__(self, "fp32_products", as_products(self.fp32_products))
        object.__setattr__(self, "attention", AttentionKernel.parse(self.attention, f"runtime.attention={self.attention!r}"))
        object.__setattr__(self, "elementwise", AttentionKernel.parse(self.elementwise,
                                                                      f"runtime.elementwise={self.elementwise!r}"))

    def step_rows(self, chunk: int | None, total: int, row_bytes: int) -> int:
        """Rows per step of a loop over ``total`` rows of ``row_bytes`` intermediate bytes each:
        the memory chunk size, cut further to the cache block."""
        rows = total if chunk is None else min(chunk, total)
        block = self.cache_block_bytes
        if block is not None:
            rows = min(rows, max(1, block // max(1, row_bytes)))
        return max(1, rows)

    def norm_block_rows(self, chunk: int | None, total: int, row_bytes: int) -> int:
        """Rows per step of a loop whose step layer-normalises its rows and works on them (the extra
        MSA's column global attention, ``row_bytes`` bytes of normalised input per row): every row
        while the whole is at most ``WHOLE_NORM_BYTES`` (one step, as fast at normal sizes), else
        blocks of about that many bytes (the normalised input and the step's intermediates never
        whole); within the memory ``chunk``. Compiled blocks (no cache blocks): the chunk, or whole."""
        rows = total if chunk is None else min(chunk, total)
        if self.cache_block_bytes is not None and not normalised_whole(total * row_bytes):
            rows = min(rows, max(1, WHOLE_NORM_BYTES // max(1, row_bytes)))
        return max(1, rows)

    @property
    def cache_block_bytes(self) -> int | None:
        """The cache block the row loops use: ``block_bytes``, or None for compiled blocks (a step
        count that depends on the length would specialise the graph to each length; inductor
        fuses the elementwise work itself)."""
        return None if self.compile else self.block_bytes

    @property
    def onednn_products(self) -> bool:
        """Whether the fp32 matrix products run through oneDNN (primitives.matmul): ``fp32_products`` as
        this CPU resolves it (auto measured once per CPU kind and process)."""
        return self.fp32_products is not Fp32Products.mkl and resolve_products(self.fp32_products) is Fp32Products.onednn

    @property
    def dtype(self):
        """The ``torch.dtype`` of the trunk's activations."""
        import torch  # deferred: the memory planner imports this module without torch

        return torch.bfloat16 if self.precision is Precision.bf16 else torch.float32

    @classmethod
    def chunked(cls, size: int) -> Options:
        """The same chunk size for every kind (handy for memory-bounded runs and tests)."""
        return cls(chunks=ChunkSizes(**{name: size for name in ChunkSizes.__dataclass_fields__}))


def chunk_slices(total: int, size: int | None):
    """Yield ``slice`` objects covering ``range(total)`` in pieces of ``size`` (one piece if None)."""
    if size is None or size >= total:
        yield slice(0, total)
        return
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def embedding_steps(total: int, row_bytes: int):
    """Blocks of ``total`` rows of an embedding with ``row_bytes`` fp32 bytes per row: a few MiB of
    fp32 intermediates each (:func:`embedding_step_rows`)."""
    return chunk_slices(total, embedding_step_rows(row_bytes))
