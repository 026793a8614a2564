"""The memory planner: peak memory of one AlphaFold2 forward pass, and chunk sizes that fit a limit.

Every size comes from the :class:`~af2cpu.model.presets.Architecture` the planner is given (the
default one, AlphaFold2's, unless a preset's is passed), named as there. Notation: L residues, S MSA
rows (clustered), Se extra-MSA rows, T templates (a :class:`TargetShape`), b bytes per activation
(``Precision.nbytes``: 4 for fp32, 2 for bf16), c a chunk size (None = the whole axis);
c_m = evoformer.msa_channel, c_e = extra_msa.msa_channel, c_z = pair_channel, c_t =
template.num_channel; P the parameter count (:func:`parameter_count`), F_m = msa_feat_dim,
F_e = extra_msa_feat_dim, F_t = template.num_pair_features, A = 37 atom types.

    peak = fixed + max over phases (resident(phase) + max over the phase's intermediates)

fixed        = runtime (PyTorch and libraries, RUNTIME_OVERHEAD)
             + parameters (P · 4: fp32 master weights, also in bf16 runs, which keep a bf16 copy: + P · 2)
             + input features (S·L·F_m·4 + Se·L·F_e·4)
             + recycled state (L·c_m·4 + L·A·3·4; the recycled pair, L²·c_z·b in the trunk's dtype, is
               freed once embedded: resident in the embeddings phase only)
resident     embeddings: L²·c_z·b (recycled) + L²·c_z·b    (the pair; the MSAs come after the templates)
             templates: L²·c_z·b + L²·c_t·b + L²·(V + 2·H_t)·4
                        (one template at a time and the online softmax's fp32 state over templates:
                        V = template.attention_value_dim, H_t = template.attention_num_head;
                        the multimer: L²·c_z·b + 2·L²·c_t·b)
             msa_embeddings: L²·c_z·b + max(S·L·c_m·b, Se·L·c_e·b)    (the extra MSA, then the MSA
                        after the extra-MSA stack)
             extra_msa: L²·c_z·b + Se·L·c_e·b    (the blocks add their updates in place)
             evoformer: L²·c_z·b + S·L·c_m·b
               compiled blocks (block_bytes None) add out of place: twice the pair and the stack's MSA
             heads:     L²·c_z·b + S·L·c_m·b    (the trunk's pair, the next pass's recycled pair as it is)
intermediates (each counted with the module's own input copies and output; st = rows per step,
the chunk size cut to the cache block, see af2cpu.model.options.Options.step_rows).
The MSA modules of a stack on R rows of C channels, (R, C) = (S, c_m) for the Evoformer and
(Se, c_e) for the extra-MSA stack, with the stack's H = msa_num_head, o = num_outer_channel and
f = msa_transition_factor. The eager stacks add every module's update into the representation a
block at a time (EvoformerIteration, inplace): no whole output, a block's (st·...) instead; the
attentions normalise their input whole while R·L·C·b is at most WHOLE_NORM_BYTES, else a block at a
time. Written for in place; out of place (compiled blocks) each output is whole (+ R·L·C·b, L²·C·b):
  MSA row attention        [R·L·C·b] + 2·H·L²·b + st·(8·L·C + H·L²)·b   (its pair bias a block of rows at a time)
  MSA column attention     [R·L·C·b] + st·9·R·C·b                       [ ]: the normalised input, while whole
  column global attention  3·gc·R·C·b (+ R·L·C·b out of place, in gc < L columns)   (a stack with
                           global_column_attention: a block of gc columns at a time, gc =
                           Options.norm_block_rows: all L up to WHOLE_NORM_BYTES of R·L·C·b)
  outer product mean       (2 + r)·R·L·o·b + sp·L·(C + 2·o)·b + L²·4 + 2·st·L·o²·b + st·L·c_z·(b + 4)
                           (each block and its fp32 division, added into the pair as computed)
                           sp: MSA rows per step of the projections; r = 1 with few rows (a copy)
  MSA transition           st·(2 + f)·L·C·b
The pair modules of a stack on C channels, C = c_z for the Evoformer-like stacks and c_t for the
template pair stack, with its H = triangle_num_head, c = num_intermediate_channel and
f = pair_transition_factor:
  triangle attention       [L²·C·b] + 2·H·L²·b + st·(9·L·C + H·L²)·b   (the normalised pair a block at a
                           time; [ ] normalised whole, while that is at most WHOLE_NORM_BYTES)
  triangle multiplication  (C + 2·c)·L²·b + st·(6·c + C)·L·b + pt·L·c·b   pt: the triangle sums' rows (≥ 64)
     in channel slabs      (c + 2·k)·L²·b + st·(6·c + C)·L·b               k: channels per slab
                           (ChunkSizes.triangle_channels): the sums whole, neither the normalised
                           pair nor the whole projections. The eager stacks (the trunk's and the
                           template pair stack) add the update into the pair a block of rows at a
                           time (no whole output); compiled blocks add it out of place: + 2·C·L²·b
                           (+ C·L²·b, at least 2·C·L²·b, in slabs)
  pair transition          st·(2 + f)·L·C·b
and
  embeddings               6·st·L·c_z·4 (fp32, a block of rows at a time) with the embedded MSA,
                           extra MSA and pair resident
  template features        st·L·(2·F_t + c_t)·4    a block of rows, st = embedding_step_rows(L·F_t·4)
  template point attention sa·L·(c_z + c_t + 3·(K + V))·4    a block of pair rows (K =
                           template.attention_key_dim), sa = embedding_step_rows of that, ≤ c/L for
                           a chunk of c residue pairs
  structure module         5·H_s·L²·4 (its pair bias and the IPA's logits) + L²·c_z·4 (its layer-normed
                           pair, while that is at most STRUCTURE_WHOLE_PAIR_BYTES; above, a block of
                           rows at a time)
  outputs                  L²·(D + 2·E)·4 (distogram, PAE logits, aligned-confidence probabilities)
                           + S·L·M·4 (masked MSA) + L²·4 + 5·L²·8 (PAE, pTM's float64 terms)
                           + 5·B (the metrics' float64 row blocks, B = confidence.METRICS_BLOCK_BYTES)
                           + (L²·c_z + S·L·c_m)·4 in bf16 runs that return the representations
                           (their fp32 copies; ``AlphaFold.predict(return_representations=...)``)
     compact               S·L·M·4 + L²·4 + 5·L²·8 + 5·B: no (L, L, bins) array and no pair or MSA
                           representation is kept (Options.compact_outputs, chosen when the full
                           outputs do not fit the limit)
                           D, E, M: heads.distogram_num_bins, pae_num_bins, masked_msa_num_output;
                           H_s: structure_module.num_head

Attention logits never exist whole: the attention kernel computes them block by block, the pair
bias is read through a broadcast view, and only batch rows with masked keys get a materialised
bias (the H·L² per step terms, an upper bound; compiled blocks materialise it at every step, within
the same bound). With the default cache blocks (a few MiB per
step) the per-step terms are small and the whole-tensor terms set the peak, so chunk sizes
matter only when cache blocking is turned off (``block_bytes=None``).
The coefficients count the tensors af2cpu.model allocates; they are to be calibrated against measured
peak RSS (`af2cpu bench`), which is why they live in named constants.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.config import Precision, cache_dir
from af2cpu.errors import Af2CpuError, ConfigError
from af2cpu.io import atomic_write_text, file_hash
from af2cpu.model.confidence import METRICS_BLOCK_BYTES
from af2cpu.model.options import (
    STRUCTURE_WHOLE_PAIR_BYTES,
    ChunkSizes,
    Options,
    as_precision,
    embedding_step_rows,
    normalised_whole,
    triangle_product_rows,
)
from af2cpu.model.presets import Architecture, EvoformerStackConfig, Preset, get_preset
from af2cpu.runtime.memory import GIB, parse_memory_limit

DEFAULT_BLOCK_BYTES = Options().block_bytes
# Calibrated against measured peak RSS (`af2cpu bench --memory`, docs/benchmarks.md, "Memory"):
# a process holding torch, af2cpu and the inputs measured 0.32 GiB besides the weights; a Dask
# worker imports a little more.
RUNTIME_OVERHEAD = 384 << 20
FP32 = Precision.fp32.nbytes
AF2_ARCHITECTURE = Architecture()  # what the planner sizes unless given a preset's architecture
# AlphaFold-Multimer (an architecture with the multimer template embedding) samples its MSA in the
# network: the one-hot classes of its cluster profiles, the bytes per cell of a pass's extra-MSA
# features (int64 residue, two fp32 deletion features) and of the example held for every pass (numpy
# int32 msa and fp32 deletions, mask, BERT mask; their tensors with an int64 msa), and the scalar
# (L, L) features of a template (its masks, unit vector, intra-chain mask and their products).
_MSA_CLASSES = 23
_MULTIMER_EXTRA_BYTES = 8 + 4 + 4
_MULTIMER_EXAMPLE_BYTES = 16 + 20
_MULTIMER_PAIR_SCALARS = 12
# The preset with every module (templates and the PAE head): its parameter count bounds every preset's.
_FULLEST_PRESET = "model_1_ptm"


class MemoryPlanError(Af2CpuError):
    """A target cannot fit the memory limit even with the smallest chunks."""


@dataclass(frozen=True)
class TargetShape:
    """The input sizes of one forward pass that its memory depends on."""

    residues: int
    msa_rows: int  # clustered MSA rows (msa_feat's)
    extra_rows: int
    templates: int

    def __post_init__(self):
        if self.residues < 1 or self.msa_rows < 1 or self.extra_rows < 0 or self.templates < 0:
            raise ConfigError(
                f"memory estimate needs length ≥ 1, MSA rows ≥ 1, extra rows ≥ 0 and templates ≥ 0; got "
                f"L={self.residues}, S={self.msa_rows}, Se={self.extra_rows}, T={self.templates}"
            )

    @classmethod
    def largest(cls, preset: Preset, residues: int) -> TargetShape:
        """The largest pass ``preset`` runs on ``residues`` residues (all chains together): its full MSA
        sample sizes and every template slot, whatever a target's MSA turns out to hold."""
        return cls(residues, preset.num_msa_clusters, preset.max_extra_msa,
                   preset.max_templates if preset.use_templates else 0)

    @classmethod
    def of_features(cls, preset: Preset, features: Mapping[str, Any]) -> TargetShape:
        """The pass the network runs on ``features``.

        A monomer's processed features (a leading recycling axis): the MSA, extra-MSA and template rows
        that are not masked out entirely, the ones the network computes on (padding rows are dropped
        before the stacks, ``model.alphafold._without_masked_rows``), the most of any recycling pass.
        A multimer example (DeepMind's ``pipeline_multimer``): the network samples up to the preset's
        cluster rows from the example's real MSA rows and takes up to its extra rows from the rest;
        every template slot is run.
        """
        if preset.multimer:
            shapes = {name: np.shape(features[name]) for name in ("aatype", "msa", "template_aatype")}
            alignments = features.get("num_alignments")
            return cls.of_raw_features(preset, shapes, None if alignments is None else int(alignments))

        def cells(mask: np.ndarray, lead: int) -> np.ndarray:  # the axes after the first `lead` as one
            # (not -1: a single-sequence MSA has no extra rows, no template hits no templates)
            return mask.reshape(*mask.shape[:lead], int(np.prod(mask.shape[lead:], dtype=np.int64)))

        def rows(mask) -> int:  # (passes, rows, ...) -> the most rows with any unmasked cell in a pass
            mask = np.asarray(mask)
            return int((cells(mask, 2) != 0).any(axis=2).sum(axis=1).max())

        templates = 0
        if preset.use_templates and "template_mask" in features:
            # A template slot runs unless both its mask and its atom masks are zero.
            mask = np.asarray(features["template_mask"]) != 0  # (passes, T)
            atoms = cells(np.asarray(features["template_all_atom_masks"]), 2) != 0
            templates = int((mask | atoms.any(axis=-1)).sum(axis=1).max())
        return cls(int(np.shape(features["aatype"])[1]), max(1, rows(features["msa_mask"])),
                   rows(features["extra_msa_mask"]), templates)

    @classmethod
    def of_raw_features(cls, preset: Preset, shapes: Mapping[str, tuple[int, ...]],
                        num_alignments: int | None = None) -> TargetShape:
        """The pass the network runs on the raw features of ``features.npz``, from its arrays' ``shapes``
        (``af2cpu.io.npz_shapes``) and a multimer example's ``num_alignments``: known without reading or
        processing the features, as a cache key needs it. A monomer's input pipeline keeps every MSA row
        of the raw features (all unmasked) as a cluster centre, up to the preset's clusters, the next ones
        as extra rows, up to its extra rows, and the first templates, up to its template slots
        (``preprocessing.input_pipeline.process_sample``): the :meth:`of_features` of the processed
        features. A multimer example is the network's input itself.
        """
        if preset.multimer:
            # The network samples up to the preset's cluster rows from the example's real MSA rows and
            # takes up to its extra rows from the rest; every template slot is run.
            alignments = shapes["msa"][0] if num_alignments is None else num_alignments
            clusters = max(1, min(alignments, preset.num_msa_clusters))
            return cls(shapes["aatype"][0], clusters, min(max(alignments - clusters, 0), preset.max_extra_msa),
                       shapes["template_aatype"][0])
        rows = shapes["msa"][0]
        clusters = max(1, min(rows, preset.num_msa_clusters))
        # No template hits: AlphaFold2 stores shapeless empty template arrays.
        positions = shapes.get("template_all_atom_positions", (0,))
        templates = min(positions[0] if np.prod(positions) else 0, preset.max_templates) if preset.use_templates else 0
        return cls(shapes["aatype"][0], clusters, min(max(rows - clusters, 0), preset.max_extra_msa), templates)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory and what it is made of."""

    total: int
    fixed: dict[str, int]
    phase: str  # the phase whose peak is the overall peak
    resident: int  # representations alive during that phase
    largest: tuple[str, int]  # the phase's largest intermediate
    compact_outputs: bool = False  # sized for Options.compact_outputs (no (L, L, bins) outputs kept)

    def describe(self) -> str:
        """One line for logs and errors: the total, its phase and its parts, in GiB."""
        fixed = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.fixed.items())
        return (
            f"{self.total / GIB:.2f} GiB at the {self.phase} stage: fixed {fixed}; representations "
            f"{self.resident / GIB:.2f}; largest intermediate {self.largest[0]} {self.largest[1] / GIB:.2f} GiB"
            + ("; compact outputs" if self.compact_outputs else "")
        )


def _count_modules(architecture: Architecture) -> tuple[int, dict[str, str]]:
    """The parameters of the network of ``architecture``, counted on its modules built on torch's meta
    device (no memory), and the sha256 of every af2cpu source file loaded once they are built (the code
    the count read, and more)."""
    # deferred: torch, not with this module: the CLI imports the planner and starts without torch.
    import torch

    from af2cpu.model.alphafold import AlphaFold

    with torch.device("meta"):
        model = AlphaFold(replace(get_preset(_FULLEST_PRESET), architecture=architecture))
    count = sum(p.numel() for p in model.parameters())
    files = {module.__file__ for name, module in list(sys.modules.items())
             if name.split(".")[0] == "af2cpu" and getattr(module, "__file__", None)}
    return count, {path: file_hash(path) for path in sorted(files)}


def _counts_path() -> Path:
    return Path(cache_dir("planner")) / "parameter_counts.json"


def _still_valid(entry: Any) -> bool:
    """Whether a memoised count is one and every source file it was counted with is unchanged."""
    try:
        return isinstance(entry["count"], int) and all(file_hash(source) == digest
                                                        for source, digest in entry["sources"].items())
    except (OSError, KeyError, TypeError, AttributeError):
        return False


@functools.cache
def parameter_count(architecture: Architecture) -> int:
    """Parameters of the network of ``architecture`` with every module (templates and the PAE head),
    counted on the modules themselves (_count_modules); memoised in the process and in af2cpu's user
    cache, keyed by the architecture and valid while every af2cpu source file the count loaded is
    unchanged. A fresh process that plans (the CLI, `af2cpu slurm script`, an inference's cache key)
    then reads a number instead of importing torch and building the network (1.1 s)."""
    key = hashlib.sha256(repr(architecture).encode()).hexdigest()
    path = _counts_path()
    counts = {}
    with contextlib.suppress(OSError, ValueError):  # none yet, or damaged: counted again and rewritten
        loaded = json.loads(path.read_text())
        counts = loaded if isinstance(loaded, dict) else {}
    if _still_valid(counts.get(key)):
        return counts[key]["count"]
    count, sources = _count_modules(architecture)
    counts[key] = {"count": count, "sources": sources}
    with contextlib.suppress(OSError):  # a read-only cache: counted again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(counts, indent=1, sort_keys=True))
    return count


@dataclass(frozen=True)
class _Term:
    name: str
    chunk_field: str | None  # the ChunkSizes field that bounds it, None if chunks do not help
    nbytes: int
    other_fields: tuple[str, ...] = ()  # further fields that bound it (choose_chunks halves the best)


def _eff(c: int | None, axis: int) -> int:
    return axis if c is None else max(1, min(c, axis))


def _step(chunk: int | None, axis: int, row_bytes: int, block: int | None) -> int:
    """Rows per step of a row loop: the model's own rule, Options.step_rows."""
    return Options(block_bytes=block).step_rows(chunk, axis, row_bytes)


def _norm_step(chunk: int | None, axis: int, row_bytes: int, block: int | None) -> int:
    """Rows per step of a layer-normalising loop: the model's own rule, Options.norm_block_rows."""
    return Options(block_bytes=block).norm_block_rows(chunk, axis, row_bytes)


def _pair_stack_terms(prefix: str, L: int, C: int, heads: int, c: int, transition_factor: int, b: int,
                      ch: ChunkSizes, block: int | None, inplace: bool = False) -> list[_Term]:
    """The pair modules of a block on C channels (triangle multiplications of c channels); ``inplace``:
    the block adds the updates into its pair (the trunk's stacks, EvoformerIteration)."""
    ta = _step(ch.triangle_attention, L, L * 4 * C * b, block)
    tm = _step(ch.triangle_multiplication, L, L * 4 * c * b, block)
    tr = _step(ch.transition, L, L * transition_factor * C * b, block)
    pair = L * L * C * b
    return [
        # The normalised pair whole while small, else a block of rows at a time (for the bias and the
        # attention); the output whole, or in place each block's update added into the pair.
        _Term(f"{prefix}triangle attention", "triangle_attention",
              (pair if normalised_whole(pair) else 0) + (ta * L * C * b if inplace else pair)
              + 2 * heads * L * L * b + ta * (L * 8 * C + heads * L * L) * b),
        _triangle_multiplication_term(prefix, L, C, c, b, ch, tm, inplace),
        _Term(f"{prefix}pair transition", "transition",
              (tr * L * C * b if inplace else pair) + tr * L * (1 + transition_factor) * C * b),
    ]


def _triangle_multiplication_term(prefix: str, L: int, C: int, c: int, b: int, ch: ChunkSizes, tm: int,
                                  inplace: bool) -> _Term:
    """The triangle multiplication: whole (the normalised pair and the gated projections whole), or in
    slabs of ``ch.triangle_channels`` channels (the sums whole, a slab's projections). In place its
    update is added into the pair a block of rows at a time: no whole output."""
    if ch.triangle_channels is None:
        tp = triangle_product_rows(tm, L, ch.triangle_multiplication)
        # The normalised pair, the gated projections; out of place the output and the residual sum.
        nbytes = (C + 2 * c + (0 if inplace else 2 * C)) * L * L * b + tm * (6 * c + C) * L * b + tp * L * c * b
    else:
        # The sums and a slab's projections (the input pair is resident); out of place the output too,
        # and after, the output and the residual sum.
        k = _eff(ch.triangle_channels, c)
        nbytes = (c + 2 * k if inplace else max(C + c + 2 * k, 2 * C)) * L * L * b + tm * (6 * c + C) * L * b
    return _Term(f"{prefix}triangle multiplication", "triangle_channels", nbytes, ("triangle_multiplication",))


def _msa_terms(prefix: str, L: int, R: int, stack: EvoformerStackConfig, b: int, ch: ChunkSizes,
               block: int | None, pair: int, inplace: bool) -> list[_Term]:
    """The MSA modules of a block of ``stack`` on R rows (the Evoformer's or the extra stack's);
    ``inplace``: the block adds the updates into its MSA (EvoformerIteration)."""
    C, heads = stack.msa_channel, stack.msa_num_head
    o, f = stack.num_outer_channel, stack.msa_transition_factor
    act = R * L * C * b
    rows = _step(ch.msa_row_attention, R, L * 4 * C * b, block)
    opm = _step(ch.outer_product_mean, L, L * o * o * b, block)
    tr = _step(ch.transition, R, L * f * C * b, block)
    # The outer product mean's projections, a block of `proj` rows at a time; with few rows its sums
    # take a transposed copy of the right projection (OuterProductMean._few_rows).
    proj = _step(None, R, L * (C + 2 * o) * b, block)
    c_z = pair // (L * L * b)
    few_rows = int(2 * R * (o * c_z - o * o) < o * o * c_z)

    def normed(step_bytes: int) -> int:  # the attentions' normalised MSA: whole while small, else a block
        return act if normalised_whole(act) else step_bytes

    def output(step_bytes: int) -> int:  # their output: a block's update added in place, or whole
        return step_bytes if inplace else act

    if stack.global_column_attention:
        # A block of gc columns at a time (MSAColumnGlobalAttention): its normalised slice, the gate
        # (then the gated values) and the output, or the fp32 masked rows for the query's mean; in place
        # each block's update is added into the MSA, out of place the output is whole.
        gc = _norm_step(ch.msa_column_attention, L, R * C * b, block)
        column = _Term(f"{prefix}MSA column global attention", "msa_column_attention",
                       3 * gc * R * C * b + (0 if inplace or gc >= L else act))
    else:
        cols = _step(ch.msa_column_attention, L, R * 4 * C * b, block)
        column = _Term(f"{prefix}MSA column attention", "msa_column_attention",
                       normed(cols * R * C * b) + output(cols * R * C * b) + cols * R * 7 * C * b)
    return [
        _Term(f"{prefix}MSA row attention", "msa_row_attention",
              normed(rows * L * C * b) + output(rows * L * C * b) + 2 * heads * L * L * b
              + rows * (L * 6 * C + heads * L * L) * b),
        column,
        _Term(f"{prefix}outer product mean", "outer_product_mean",
              (2 + few_rows) * R * L * o * b + proj * L * (C + 2 * o) * b + L * L * FP32
              + 2 * opm * L * o * o * b + (opm * L * c_z * (b + FP32) if inplace else pair)),
        _Term(f"{prefix}MSA transition", "transition", output(tr * L * C * b) + tr * L * (1 + f) * C * b),
    ]


def _evoformer_stack_terms(prefix: str, L: int, R: int, stack: EvoformerStackConfig, c_z: int, b: int,
                           ch: ChunkSizes, block: int | None, inplace: bool) -> list[_Term]:
    """Every module of a block of an Evoformer-like ``stack`` on R MSA rows."""
    return (_msa_terms(prefix, L, R, stack, b, ch, block, L * L * c_z * b, inplace)
            + _pair_stack_terms("", L, c_z, stack.triangle_num_head, stack.num_intermediate_channel,
                                stack.pair_transition_factor, b, ch, block, inplace))


def _phases(shape: TargetShape, b: int, ch: ChunkSizes, block: int | None, a: Architecture,
            compact: bool = False, representations: bool = True) -> dict[str, tuple[int, list[_Term]]]:
    L, S, Se, T = shape.residues, shape.msa_rows, shape.extra_rows, shape.templates
    c_z, t = a.pair_channel, a.template
    pair = L * L * c_z * b
    msa = S * L * a.msa_channel * b
    extra = Se * L * a.extra_msa.msa_channel * b
    # The embedders work in fp32 whatever the trunk's precision, a block of rows at a time: the
    # input embedding's pair, the relative positions, the recycled pair's layer norm and distogram
    # projection, and their sums, cast into the trunk's dtype block by block.
    embedding = [_Term("embeddings and recycling", None,
                       6 * min(L, embedding_step_rows(L * c_z * FP32)) * L * c_z * FP32)]
    # The recycled pair is read while the pair is embedded and freed before the templates; the extra MSA
    # is embedded after the templates, the MSA after the extra-MSA stack, once the extra MSA is freed
    # (EmbeddingsAndEvoformer.forward).
    phases: dict[str, tuple[int, list[_Term]]] = {"embeddings": (2 * pair, embedding)}
    if T and t.multimer:
        phases["templates"] = _multimer_template_phase(L, T, b, ch, block, a)
    elif T:
        phases["templates"] = _template_phase(L, b, ch, block, a)
    phases["msa_embeddings"] = (pair + max(msa, extra), embedding)
    # Eager blocks add their updates into the pair and the MSA (EvoformerIteration, inplace); compiled
    # blocks (no cache blocks) add them out of place: the input and the sum.
    inplace = block is not None
    copies = 1 if inplace else 2
    if Se:
        phases["extra_msa"] = (copies * (pair + extra),
                               _evoformer_stack_terms("extra ", L, Se, a.extra_msa, c_z, b, ch, block, inplace))
    phases["evoformer"] = (copies * (pair + msa),
                           _evoformer_stack_terms("", L, S, a.evoformer, c_z, b, ch, block, inplace))
    if t.multimer:
        phases["msa_sampling"] = (0, [_Term("MSA sampling and cluster profiles", None,
                                            (Se + 3 * S) * L * _MSA_CLASSES * FP32 + S * Se * FP32)])
    h = a.heads
    # The PAE head is counted whether the preset has it or not: an upper bound, as the parameters are.
    # The heads and the structure module read the trunk's pair and MSA (its dtype; the pair is the next
    # pass's recycled pair) a block of rows at a time, upcast per block.
    # Masked MSA logits, PAE, pTM's float64 (L, L) terms, and the metrics' float64 row blocks (the
    # block, its shifted and exponentiated copies, the softmax and a weighted sum).
    kept = (S * L * h.masked_msa_num_output * FP32 + L * L * FP32 + 5 * L * L * 8
            + 5 * min(METRICS_BLOCK_BYTES, L * L * h.pae_num_bins * 8))
    if not compact:  # the (L, L, bins) arrays and the representations' fp32 copies (bf16 runs)
        kept += ((h.distogram_num_bins + 2 * h.pae_num_bins) * L * L * FP32
                 + ((pair + msa) // b * FP32 if b != FP32 and representations else 0))
    phases["heads"] = (pair + msa, [
        _Term("structure module", None, 5 * a.structure_module.num_head * L * L * FP32
              + (L * L * c_z * FP32 if L * L * c_z * FP32 <= STRUCTURE_WHOLE_PAIR_BYTES else 0)),
        _Term("compact outputs" if compact else "outputs", None, kept)])
    return phases


def _template_phase(L: int, b: int, ch: ChunkSizes, block: int | None,
                    a: Architecture) -> tuple[int, list[_Term]]:
    """The monomer's template embedding (af2cpu.model.template.TemplateEmbedding): one template at a
    time, its features embedded a block of rows at a time into its activation, its pair stack
    updating that in place, then folded into the online softmax's fp32 running maximum, denominator
    (L, L, H) and weighted values (L, L, H·c_v) a block of pair rows at a time; the update added
    into the pair in place. Resident: the pair, one template and the softmax's state,
    whatever the number of templates."""
    c_z, t = a.pair_channel, a.template
    c_t = t.num_channel
    features_rows = min(L, embedding_step_rows(L * t.num_pair_features * FP32))
    # TemplateEmbedding._row_blocks: the rows of a block and the fp32 bytes of one residue pair.
    pair_bytes = FP32 * (c_z + c_t + 3 * (t.attention_key_dim + t.attention_value_dim))
    attention_rows = min(L, embedding_step_rows(L * pair_bytes))
    if ch.template_attention is not None:
        attention_rows = min(attention_rows, max(1, ch.template_attention // L))
    return (
        L * L * c_z * b + L * L * c_t * b + L * L * (t.attention_value_dim + 2 * t.attention_num_head) * FP32,
        _pair_stack_terms("template ", L, c_t, t.triangle_num_head, t.num_intermediate_channel,
                          t.pair_transition_factor, b, ch, block, inplace=True) + [
            # A block of rows: the fp32 features (and the distogram's comparisons), their projection.
            _Term("template features", None, features_rows * L * (2 * t.num_pair_features + c_t) * FP32),
            _Term("template point attention", "template_attention", attention_rows * L * pair_bytes),
        ],
    )


def _multimer_template_phase(L: int, T: int, b: int, ch: ChunkSizes, block: int | None,
                             a: Architecture) -> tuple[int, list[_Term]]:
    """The multimer's template embedding (af2cpu.model.template.MultimerTemplateEmbedding): one template
    at a time through its pair stack, summed in place; resident the pair (the update is added into it
    a block of rows at a time) and two template-sized pairs (the sum and the current
    template)."""
    c_z, t = a.pair_channel, a.template
    c_t = t.num_channel
    output_rows = min(L, embedding_step_rows(L * c_z * FP32))
    # MultimerSingleTemplateEmbedding: the rows of a block of its features.
    features_rows = min(L, embedding_step_rows(
        L * FP32 * (t.dgram_features.num_bins + 2 * len(rc.restypes_with_x_and_gap) + 2 * c_z)))
    return (
        L * L * c_z * b + 2 * L * L * c_t * b,
        _pair_stack_terms("template ", L, c_t, t.triangle_num_head, t.num_intermediate_channel,
                          t.pair_transition_factor, b, ch, block, inplace=True) + [
            # A block of rows, fp32: the query pair's copy and layer norm, the distogram, unit vectors
            # and masks, the input layers' outputs and their running sum (cast into the template's
            # activation, resident).
            _Term("template features", None,
                  features_rows * L * (2 * c_z + t.dgram_features.num_bins + _MULTIMER_PAIR_SCALARS + 3 * c_t) * FP32),
            # A block of rows: the mean, its ReLU and the output layer's update.
            _Term("template output layer", None, output_rows * L * (2 * c_t + c_z) * b),
        ],
    )


def _fixed(shape: TargetShape, a: Architecture, b: int) -> dict[str, int]:
    L, S, Se = shape.residues, shape.msa_rows, shape.extra_rows
    if a.template.multimer:
        # The pass's msa_feat and extra-MSA features (residue int64, has-deletion, deletion value), and
        # DeepMind's example with its tensor copy (msa, deletions, masks: 36 bytes a cell for S + Se rows).
        features = (S * L * a.msa_feat_dim * FP32 + Se * L * _MULTIMER_EXTRA_BYTES
                    + (S + Se) * L * _MULTIMER_EXAMPLE_BYTES)
    else:
        features = S * L * a.msa_feat_dim * FP32 + Se * L * a.extra_msa_feat_dim * FP32
    return {
        "runtime": RUNTIME_OVERHEAD,
        # The parameters stay fp32 in bf16 runs too, which keep each weight's bf16 cast beside them
        # (primitives.kept_weight; an upper bound: the fp32 parts, the structure module and the heads, keep none).
        "parameters": parameter_count(a) * (FP32 + (b if b < FP32 else 0)),
        "features": features,
        # The recycled pair (the trunk's dtype) is counted where it lives: the embeddings read it and
        # free it (AlphaFold.predict), the heads phase makes the next one; the rest stays, in fp32.
        "recycling": L * a.msa_channel * FP32 + L * rc.atom_type_num * 3 * FP32,
    }


def _estimate(shape: TargetShape, b: int, chunks: ChunkSizes, block: int | None, a: Architecture,
              compact: bool = False, representations: bool = True) -> tuple[MemoryEstimate, _Term]:
    fixed = _fixed(shape, a, b)
    best: tuple[MemoryEstimate, _Term] | None = None
    for phase, (resident, terms) in _phases(shape, b, chunks, block, a, compact, representations).items():
        top = max(terms, key=lambda t: t.nbytes)
        total = sum(fixed.values()) + resident + top.nbytes
        if best is None or total > best[0].total:
            best = (MemoryEstimate(total, fixed, phase, resident, (top.name, top.nbytes), compact), top)
    return best


def estimate_peak_memory(
    shape: TargetShape,
    precision: Precision | str,
    chunks: ChunkSizes | None = None,
    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
    architecture: Architecture = AF2_ARCHITECTURE,
    compact_outputs: bool = False,
    representations: bool = True,
) -> MemoryEstimate:
    """Predicted peak bytes of one forward pass (one recycle) of ``architecture`` on inputs of
    ``shape``, with the given chunk sizes and cache blocks (``Options.block_bytes``) and outputs
    (``Options.compact_outputs``; ``representations``: whether predict returns them); see the module
    docstring for the formula."""
    b = as_precision(precision).nbytes
    return _estimate(shape, b, chunks or ChunkSizes(), block_bytes, architecture, compact_outputs,
                     representations)[0]


def phase_estimates(shape: TargetShape, precision: Precision | str, chunks: ChunkSizes | None = None,
                    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
                    architecture: Architecture = AF2_ARCHITECTURE, compact_outputs: bool = False,
                    representations: bool = True) -> dict[str, int]:
    """The predicted peak bytes of each phase (fixed + its resident + its largest intermediate), as
    :func:`estimate_peak_memory` takes the maximum of; for measuring one stage against the planner."""
    b = as_precision(precision).nbytes
    fixed = sum(_fixed(shape, architecture, b).values())
    return {phase: fixed + resident + max(t.nbytes for t in terms)
            for phase, (resident, terms) in _phases(shape, b, chunks or ChunkSizes(), block_bytes,
                                                    architecture, compact_outputs, representations).items()}


def _axis(field: str, shape: TargetShape, a: Architecture) -> int:
    """The longest axis a chunk field slices (its value beyond that changes nothing)."""
    L, S, Se = shape.residues, shape.msa_rows, shape.extra_rows
    return {
        "triangle_channels": max(a.evoformer.num_intermediate_channel, a.extra_msa.num_intermediate_channel,
                                 a.template.num_intermediate_channel),
        "msa_row_attention": max(S, Se),
        "msa_column_attention": L,
        "triangle_attention": L,
        "template_attention": L * L,
        "outer_product_mean": L,
        "triangle_multiplication": L,
        "transition": max(S, Se, L),
    }[field]


def choose_chunks(
    limit: int, shape: TargetShape, precision: Precision | str, block_bytes: int | None = DEFAULT_BLOCK_BYTES,
    architecture: Architecture = AF2_ARCHITECTURE, compact_outputs: bool | None = None,
    representations: bool = True,
) -> tuple[ChunkSizes, MemoryEstimate]:
    """The largest chunk sizes (powers of two, or unchunked) whose estimated peak fits `limit`.

    Starting unchunked, the chunk size of the largest intermediate at the peak is halved until the
    estimate fits. Raises MemoryPlanError with the numbers when the smallest chunks do not fit.
    ``compact_outputs`` None keeps the full outputs when some chunks fit them, else plans for
    compact outputs (``Options.compact_outputs``; the estimate says which it chose).
    ``representations``: whether the caller has predict return them (their fp32 copies in bf16 runs).
    """
    if compact_outputs is None:
        try:
            return choose_chunks(limit, shape, precision, block_bytes, architecture, False, representations)
        except MemoryPlanError:  # the compact outputs' error, if any, names what still does not fit
            return choose_chunks(limit, shape, precision, block_bytes, architecture, True, representations)
    b = as_precision(precision).nbytes
    chunks = ChunkSizes()

    def estimate_for(candidate: ChunkSizes) -> tuple[MemoryEstimate, _Term]:
        return _estimate(shape, b, candidate, block_bytes, architecture, compact_outputs, representations)

    while True:
        estimate, top = estimate_for(chunks)
        if estimate.total <= limit:
            return chunks, estimate
        fields = [f for f in (top.chunk_field, *top.other_fields)
                  if f is not None and (getattr(chunks, f) or _axis(f, shape, architecture)) > 1]
        field = None
        if fields:
            # Chunks help only if the smallest chunks bring this intermediate under the limit.
            floor, floor_top = estimate_for(replace(chunks, **dict.fromkeys(fields, 1)))
            if floor.total > limit and floor_top.name == top.name:
                estimate = floor
            else:  # halve the field that lowers the estimate most
                field = min(fields, key=lambda f: estimate_for(_halved(chunks, f, shape, architecture))[0].total)
        if field is None:
            raise MemoryPlanError(
                f"a target of {shape.residues} residues with {shape.msa_rows} MSA rows, {shape.extra_rows} "
                f"extra MSA rows and {shape.templates} templates needs {estimate.describe()}, and chunking "
                f"cannot make {top.name} small enough; the memory limit is {limit / GIB:.2f} GiB. Use "
                "runtime.precision=bf16 (on a CPU with native bf16: AVX512-BF16 or AMX), fewer MSA rows, or more "
                "memory (runtime.memory_limit)"
            )
        chunks = _halved(chunks, field, shape, architecture)


def _halved(chunks: ChunkSizes, field: str, shape: TargetShape, a: Architecture) -> ChunkSizes:
    """``chunks`` with ``field`` cut to the largest power of two below its current size."""
    current = getattr(chunks, field) or _axis(field, shape, a)
    return replace(chunks, **{field: 1 << ((current - 1).bit_length() - 1)})


def plan_options(runtime, preset: Preset, shape: TargetShape, limit: int | None = None,
                 representations: bool = True) -> tuple[Options, MemoryEstimate]:
    """The network's run options for one target, and the planner's estimate of its peak memory.

    ``runtime`` is the ``runtime`` config section (its precision, memory_limit, compile,
    compile_cache_dir, fp32_products and attention: a DictConfig or an :class:`af2cpu.config.RuntimeConfig`), ``preset`` the model
    (its architecture sizes the estimate), ``shape`` the target's input sizes and ``limit`` the memory
    limit in bytes (default: ``runtime.memory_limit``); ``representations`` whether the run returns the
    representations (``output.save_representations``). The chunk sizes are the largest that fit;
    raises MemoryPlanError when none do.
    """
    if limit is None:
        limit = parse_memory_limit(str(runtime.memory_limit))
    compiled = bool(runtime.compile)
    options = Options(precision=runtime.precision, compile=compiled, fp32_products=runtime.fp32_products,
                      attention=runtime.attention, elementwise=runtime.elementwise,
                      compile_cache_dir=str(runtime.compile_cache_dir) if compiled else None)
    chunks, estimate = choose_chunks(limit, shape, options.precision, options.cache_block_bytes,
                                     preset.architecture, representations=representations)
    return replace(options, chunks=chunks, compact_outputs=estimate.compact_outputs), estimate
