"""`af2cpu bench`: the model's speed against DeepMind's JAX AlphaFold, side by side in one run.

Import this module only after setting the thread environment (``OMP_NUM_THREADS``, ``XLA_FLAGS``):
torch and XLA read it once, when first imported (`af2cpu bench` does so in af2cpu.cli.bench).


Both models get the same random parameters in the official format and the same processed features
(a random query of length L, an MSA made from it by point mutations, AlphaFold2's four template slots
all masked), run with the same thread count, and are timed per recycling pass after one warm-up pass
(``first_pass_s``; XLA's compilation of the reference is timed on its own, ``compile_s``, and so is
what torch.compile adds to af2cpu's first pass). ``--default-msa-sizes`` pads both models' inputs to
AlphaFold2's default 508/5120/4 rows, as AlphaFold2's pipeline does for every target. Work is counted once, on af2cpu's pass, with
``torch.utils.flop_counter`` (matrix products and attention, the useful work: the reference also
computes on the masked template slots), and set against a GEMM peak measured here. The reference is
imported only when the ``reference`` extra is installed.

Results: ``bench.json`` and ``bench.md`` (a markdown table) in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from af2cpu.bench import MULTIMER_TEMPLATES, PRESET
from af2cpu.bench.machine import gemm_peak, machine_info
from af2cpu.bench.reference import available as reference_available
from af2cpu.bench.reference import reference_config, reference_params
from af2cpu.common import residue_constants as rc
from af2cpu.config import RuntimeConfig, cache_dir
from af2cpu.io import atomic_write_text
from af2cpu.model import kernels, primitives
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.memory import TargetShape, plan_options
from af2cpu.model.options import Options
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import Preset, get_preset
from af2cpu.model.weights import apply_backend
from af2cpu.preprocessing.features import msa_features, sequence_features
from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
from af2cpu.preprocessing.parsers import Msa
from af2cpu.runtime.products import resolve_products


def run(args: argparse.Namespace, threads: int) -> int:
    """Time both models at every length of ``args``; write ``bench.json`` and ``bench.md``."""
    torch.set_num_threads(threads)
    reference = ReferenceModel() if not args.no_reference and reference_available() else None
    preset = getattr(args, "preset", PRESET)
    results = {"machine": machine_info(threads), "preset": preset,
               "chains": args.chains if get_preset(preset).multimer else None,
               "blocks": args.blocks, "msa_rows": args.msa_rows,
               "extra_rows": args.extra_rows, "default_msa_sizes": args.default_msa_sizes,
               "passes": args.passes, "gemm_peak_gflops": gemm_peak(),
               "reference": reference is not None, "runs": []}
    print(f"GEMM peak ({threads} threads): {results['gemm_peak_gflops']}")
    for length in args.lengths:
        results["runs"].extend(bench_length(length, args, reference, results["gemm_peak_gflops"]))
    breakdown_length = args.breakdown_length or max(args.lengths)
    results["breakdown"], results["work_breakdown"] = {}, {}
    if not getattr(args, "no_breakdown", False):
        for p in args.precisions:
            results["breakdown"][p], results["work_breakdown"][p] = module_breakdown(breakdown_length, args, p)
    results["breakdown_length"] = breakdown_length
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "bench.md", markdown(results))
    print(markdown(results))
    return 0


def options(precision: str, shape: TargetShape, compiled: bool = False, preset: Preset | None = None) -> Options:
    """The run options `af2cpu predict` derives for this shape (af2cpu.model.memory.plan_options), without
    a memory limit: the benchmark times whole intermediates."""
    runtime = RuntimeConfig(precision=precision, compile=compiled, compile_cache_dir=cache_dir("inductor"))
    planned, _ = plan_options(runtime, preset or get_preset(PRESET), shape, limit=1 << 62)
    return planned


def bench_inputs(length: int, args, blocks: int | None = None):
    """(model, flat parameters, features, the planner's shape) of one benchmark pass at ``length``:
    the monomer's processed features (:func:`make_inputs`), or for a multimer ``args.preset``
    DeepMind's multimer example of ``args.chains`` chains of ``length`` residues
    (:func:`make_multimer_inputs`)."""
    blocks = args.blocks if blocks is None else blocks
    name = getattr(args, "preset", PRESET)
    if get_preset(name).multimer:
        model, flat, example = make_multimer_inputs(length, args.chains, args.msa_rows, args.extra_rows, blocks,
                                                    preset=name)
        return model, flat, example, TargetShape.of_features(model.preset, example)
    model, flat, features = make_inputs(length, args.msa_rows, args.extra_rows, blocks,
                                        default_sizes=args.default_msa_sizes)
    return model, flat, features, TargetShape.of_features(model.preset, features)


def make_inputs(length: int, msa_rows: int, extra_rows: int, blocks: int = 48, seed: int = 0,
                default_sizes: bool = False, templates: int = 0):
    """(model with random official-format parameters, the flat parameters, processed features).

    The features are AlphaFold2's processed features for one pass, with four template slots: the
    first ``templates`` hold structures (:func:`_template_hits`), the others are fully masked, as
    AlphaFold2's input pipeline gives a target without template hits. With
    ``default_sizes`` the ``msa_rows + extra_rows`` sequences go through AlphaFold2's default
    settings (up to 508 clusters, 5120 extra rows) and every axis is padded to those sizes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(rc.restypes))
    query = "".join(rng.choice(letters, length))
    rows = [query]
    for _ in range(msa_rows + extra_rows - 1):
        row = np.array(list(query))
        hit = rng.random(length) < 0.3
        row[hit] = rng.choice(np.append(letters, "-"), hit.sum())
        rows.append("".join(row))
    msa = Msa(sequences=rows, deletion_matrix=[[0] * length for _ in rows],
              descriptions=[f"seq{i}" for i in range(len(rows))])
    raw = {**sequence_features(query, "bench"), **msa_features([msa])}
    t = 4
    raw.update(_template_hits(query, min(templates, t), rng))
    model = AlphaFold(get_preset(PRESET).with_blocks(evoformer=blocks))
    flat = random_params(model, seed=seed)
    load_params(model, flat)
    if default_sizes:
        settings = PipelineSettings.from_preset(get_preset(PRESET), num_recycle=0, pad_to_fixed_size=True)
    else:
        settings = PipelineSettings.from_preset(get_preset(PRESET), num_recycle=0, num_msa_clusters=msa_rows,
                                                max_extra_msa=extra_rows)
    features = process_features(raw, settings, seed=seed)
    for name in [k for k in features if k.startswith("template_")]:
        value = features[name]
        pad = [(0, 0)] * value.ndim
        pad[1] = (0, max(0, t - value.shape[1]))
        features[name] = np.pad(value, pad)
    return model.eval(), flat, features


def _template_hits(query: str, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Raw template features of ``count`` hits covering the whole ``query``: its residue types on a
    random walk of 3.8 Å steps, with N, Cα, C, O and Cβ atoms (every atom the template stage reads)."""
    num_res = len(query)
    positions = np.zeros((count, num_res, rc.atom_type_num, 3), np.float32)
    masks = np.zeros((count, num_res, rc.atom_type_num), np.float32)
    for i in range(count):
        steps = rng.standard_normal((num_res, 3))
        ca = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
        for atom in ("N", "CA", "C", "O", "CB"):
            index = rc.atom_order[atom]
            positions[i, :, index] = ca + (0 if atom == "CA" else 1.5 * rng.standard_normal((num_res, 3)))
            masks[i, :, index] = 1.0
    return {"template_aatype": np.stack([rc.sequence_to_onehot(query, rc.HHBLITS_AA_TO_ID)] * count).astype(np.float32)
            if count else np.zeros((0, num_res, 22), np.float32),
            "template_all_atom_masks": masks, "template_all_atom_positions": positions,
            "template_domain_names": np.array([f"hit{i}_A".encode() for i in range(count)], dtype=object),
            "template_sequence": np.array([query.encode()] * count, dtype=object),
            "template_sum_probs": np.ones((count, 1), np.float32)}


def multimer_bench_preset(name: str, msa_rows: int, extra_rows: int, blocks: int = 48) -> Preset:
    """The multimer preset ``name`` sampling exactly ``msa_rows`` MSA rows and ``extra_rows`` extra rows,
    BERT masking off and ``blocks`` Evoformer blocks: with :func:`make_multimer_inputs`'s example its
    in-network draw only orders the rows (RNG-free, as the reference is configured the same way)."""
    preset = dataclasses.replace(get_preset(name), max_msa_clusters=msa_rows + MULTIMER_TEMPLATES,
                                 max_extra_msa=extra_rows, masked_msa_replace_fraction=0.0)
    return preset.with_blocks(evoformer=blocks)


def _helix(num_res: int, shift: float) -> np.ndarray:
    """Backbone atoms (atom37 layout: N, Cα, C, Cβ, O) of an α-helix-like trace of ``num_res`` residues,
    3.6 residues a turn, 1.5 Å rise, moved ``shift`` Å along x: a synthetic template."""
    def trace(t, radius):
        angle = np.deg2rad(100.0) * t
        return np.stack([radius * np.cos(angle) + shift, radius * np.sin(angle), 1.5 * t], -1)
    i = np.arange(num_res, dtype=np.float64)
    positions = np.zeros((num_res, rc.atom_type_num, 3))
    for atom, offset, radius in (("N", -0.35, 1.6), ("CA", 0.0, 2.3), ("C", 0.35, 1.7), ("CB", 0.0, 3.8),
                                 ("O", 0.5, 1.2)):
        positions[:, rc.atom_order[atom]] = trace(i + offset, radius)
    return positions


def make_multimer_inputs(chain_length: int, chains: int = 2, msa_rows: int = 64, extra_rows: int = 256,
                         blocks: int = 48, seed: int = 0, preset: str = "model_1_multimer_v3"):
    """(model with random official-format parameters, the flat parameters, DeepMind's multimer example
    of :func:`multimer_example`) for the multimer ``preset`` with ``blocks`` Evoformer blocks."""
    example = multimer_example(chain_length, chains, msa_rows, extra_rows, seed)
    model = AlphaFold(multimer_bench_preset(preset, msa_rows, extra_rows, blocks))
    flat = random_params(model, seed=seed)
    load_params(model, flat)
    return model.eval(), flat, example


def multimer_example(chain_length: int, chains: int = 2, msa_rows: int = 64, extra_rows: int = 256,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """DeepMind's multimer example of a heteromer of ``chains`` chains of ``chain_length`` random residues.

    The layout of ``pipeline_multimer`` (per-chain residue numbering, 1-based asym, entity and sym
    ids, gap 21): the query, then ``msa_rows + extra_rows - 1`` rows in random order, half of them
    paired (every chain's columns, point mutations of the query at 30 %) and half unpaired (one
    chain's columns, the others gaps), a few deletions; ``cluster_bias_mask`` on the first
    ``msa_rows`` rows (2 on the query), so a network sampling ``msa_rows`` rows
    (:func:`multimer_bench_preset`) takes exactly those and the rest become the extra MSA, whatever
    its draw. Four template slots: the first a synthetic helix on every chain (backbone and Cβ), the
    others empty, as the pipeline pads them."""
    rng = np.random.default_rng(seed)
    queries = [rng.integers(0, 20, chain_length) for _ in range(chains)]
    query = np.concatenate(queries)
    num_res, num_rows = query.shape[0], msa_rows + extra_rows

    def mutated(seq):
        row = seq.copy()
        hit = rng.random(seq.shape[0]) < 0.3
        row[hit] = rng.integers(0, 22, hit.sum())
        return row
    rows = []
    for i in range(num_rows - 1):
        if i % 2 == 0:
            rows.append(mutated(query))
        else:
            row = np.full(num_res, 21)
            c = (i // 2) % chains
            row[c * chain_length:(c + 1) * chain_length] = mutated(queries[c])
            rows.append(row)
    msa = np.stack([query] + [rows[i] for i in rng.permutation(len(rows))]).astype(np.int32)
    deletions = ((rng.random(msa.shape) < 0.05) * rng.integers(1, 4, msa.shape)).astype(np.float32)
    deletions[0] = 0
    mask = np.ones(msa.shape, np.float32)
    t = MULTIMER_TEMPLATES
    example = {
        "aatype": query.astype(np.int32), "seq_mask": np.ones(num_res, np.float32),
        "residue_index": np.tile(np.arange(chain_length), chains).astype(np.int32),
        "asym_id": np.repeat(np.arange(1, chains + 1), chain_length).astype(np.float64),
        "entity_id": np.repeat(np.arange(1, chains + 1), chain_length).astype(np.float64),
        "sym_id": np.ones(num_res, np.float64),
        "msa": msa, "deletion_matrix": deletions, "msa_mask": mask, "bert_mask": mask.copy(),
        "cluster_bias_mask": (np.arange(num_rows) < msa_rows).astype(np.float64) + (np.arange(num_rows) == 0),
        "template_aatype": np.zeros((t, num_res), np.int64),
        "template_all_atom_mask": np.zeros((t, num_res, rc.atom_type_num), np.float32),
        "template_all_atom_positions": np.zeros((t, num_res, rc.atom_type_num, 3), np.float32),
        "all_atom_positions": np.zeros((num_res, rc.atom_type_num, 3)),
        "all_atom_mask": np.zeros((num_res, rc.atom_type_num), np.int32),
    }
    example["template_aatype"][0] = query
    example["template_all_atom_positions"][0] = np.concatenate(
        [_helix(chain_length, 30.0 * c) for c in range(chains)])
    for atom in ("N", "CA", "C", "O", "CB"):
        example["template_all_atom_mask"][0, :, rc.atom_order[atom]] = 1.0
    gly = example["template_aatype"][0] == rc.restype_order["G"]
    example["template_all_atom_mask"][0, gly, rc.atom_order["CB"]] = 0.0
    return example


def bench_length(length: int, args, reference, peak: dict) -> list[dict]:
    """Time af2cpu (each precision, eager and optionally compiled) and the reference at one length."""
    model, flat, features, shape = bench_inputs(length, args)
    # One pass, as `af2cpu predict` runs it by default (output.save_representations=false).
    one_pass = functools.partial(model.predict, features, num_recycle=0, return_representations=False)
    runs = []
    gflop = None
    # Back ends, fp32 product libraries, attention and element-wise kernels take turns on the same model
    # (runtime.backend, runtime.fp32_products, runtime.attention, runtime.elementwise).
    variants = [(backend, products, attention, elementwise) for backend in getattr(args, "backends", ["native"])
                for products in getattr(args, "fp32_products", ["auto"])
                for attention in getattr(args, "attention", ["auto"])
                for elementwise in getattr(args, "elementwise", ["auto"])]
    modes = [(p, False) for p in args.precisions] + ([(p, True) for p in args.precisions] if args.compile else [])
    for precision, compiled in modes:
        planned = options(precision, shape, compiled, model.preset)
        for _, products, attention, elementwise in variants:
            # runtime.fp32_products, runtime.attention and runtime.elementwise=auto measure the alternatives the
            # first time they are asked (once per kind of CPU; af2cpu's kernels are built then too): here, before
            # any pass, so that no pass is timed or counted with a measurement in it.
            resolve_products(products)
            attention_kernels(attention, planned.dtype)
            kernels.uses_elementwise(elementwise, planned.dtype)

        def use(variant, planned=planned):
            backend, products, attention, elementwise = variant
            model.set_options(dataclasses.replace(planned, fp32_products=products, attention=attention,
                                                  elementwise=elementwise))
            apply_backend(model, backend)  # in place, back and forth on the same weights

        first = {}
        for variant in variants:  # a warm-up pass each (the first also counts the work, a little slower)
            use(variant)
            if gflop is None:
                with flop_counter() as counter:
                    first[variant], _, _ = _time_passes(one_pass, 0)
                gflop = counter.get_total_flops() / 1e9
            else:
                first[variant], _, _ = _time_passes(one_pass, 0)
        # Several variants take turns pass by pass, so that a busy machine slows each alike.
        total, cpu = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0.0)
        for _ in range(args.passes):
            for variant in variants:
                use(variant)
                start, cpu_start = time.perf_counter(), time.process_time()
                one_pass()
                total[variant] += time.perf_counter() - start
                cpu[variant] += time.process_time() - cpu_start
        for variant in variants:
            backend, products, attention, elementwise = variant
            seconds = round(total[variant] / args.passes, 3)
            runs.append({"model": "af2cpu", "backend": backend, "fp32_products": products,
                         "fp32_products_used": resolve_products(products).value, "attention": attention,
                         # compiled blocks run PyTorch's attention kernel whatever runtime.attention says
                         "attention_used": attention_kernels("pytorch" if compiled else attention, planned.dtype),
                         "elementwise": elementwise, "elementwise_used": "af2cpu" if not compiled and kernels.uses_elementwise(
                             elementwise, planned.dtype) else "pytorch",
                         "length": length, "precision": precision, "compile": compiled,
                         # torch.compile compiles during the first pass: what it adds to a pass.
                         "compile_s": round(max(0.0, first[variant] - seconds), 2) if compiled else None,
                         "first_pass_s": first[variant], "pass_s": seconds,
                         "pass_cpu_s": round(cpu[variant] / args.passes, 3), "gflop": round(gflop, 1),
                         "gflops": round(gflop / seconds, 1),
                         "peak_fraction": _peak_fraction(gflop / seconds, peak[precision])})
            print(runs[-1])
    if reference is not None:
        step, compile_s = reference.step_fn(flat, features, args.blocks, model.preset)
        # XLA's compilation is timed on its own (ahead of time); with the padded default sizes or a
        # complex a pass takes minutes, so the compiled pass is timed without a further warm-up pass.
        warm_up = None if args.default_msa_sizes or model.preset.multimer else step
        first, seconds, cpu = _time_passes(warm_up, args.passes, step)
        runs.append({"model": "reference", "length": length, "precision": "fp32", "compile": True,
                     "compile_s": compile_s,
                     "first_pass_s": first, "pass_s": seconds, "pass_cpu_s": cpu, "gflop": round(gflop, 1),
                     "gflops": round(gflop / seconds, 1), "peak_fraction": round(gflop / seconds / peak["fp32"], 3)})
        print(runs[-1])
        for r in runs[:-1]:
            r["speedup_vs_reference"] = round(seconds / r["pass_s"], 2)
            # On a shared machine the CPU seconds a pass used are steadier than its wall time.
            r["cpu_speedup_vs_reference"] = round(cpu / r["pass_cpu_s"], 2)
    return runs


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Products of CPU flash attention: q·kᵀ and the weighted sum of values, 2 flops per multiply-add."""
    *batch, q_len, c_qk = query_shape
    k_len, c_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * q_len * k_len * (c_qk + c_v)


def _onednn_linear_flop(x_shape, second, third=None, *args, out_shape=None, **kwargs) -> int:
    """Products of oneDNN's linear kernel (the layers' bf16 products, fp32 where runtime.fp32_products resolves to
    oneDNN): x (..., k) @ weightᵀ (k, n). Its two overloads share the count (the counter looks operators up by
    name): (x, weight, bias, ...) and, with a tensor multiplied into the result (matmul's ``multiply``), (x, other,
    weight, bias, ...): the weight is the third operand where that is a matrix (a bias is a vector or None)."""
    weight_shape = third if third is not None and len(third) == 2 else second
    return 2 * math.prod(x_shape) * weight_shape[0]


def attention_kernels(requested: str, dtype: torch.dtype) -> dict[str, str]:
    """The attention kernel ``runtime.attention=requested`` runs in ``dtype`` at AlphaFold2's head sizes
    ("8", "16", "32" -> "af2cpu" or "pytorch"), decided (and built, and measured) now."""
    return {str(size): "af2cpu" if kernels.uses_kernel(requested, dtype, size, size) else "pytorch" for size in kernels.ALPHAFOLD_HEAD_SIZES}


def flop_counter() -> FlopCounterMode:
    """torch's flop counter, also counting the kernels it does not know (torch 2.13): CPU flash attention
    (without it the attention's products, about 8 % of a pass at L=128, went uncounted), af2cpu's attention
    kernels where this process has loaded them, and oneDNN's fp32 linear kernel (the layers' products where
    runtime.fp32_products resolves to oneDNN)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
               torch.ops.mkldnn._linear_pointwise: _onednn_linear_flop}
    if kernels.loaded():
        mapping[torch.ops.af2cpu.attention] = _cpu_attention_flop
        if kernels.loaded() == "amx":
            mapping[torch.ops.af2cpu.attention_amx] = _cpu_attention_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _time_passes(step, passes: int, timed=None) -> tuple[float | None, float | None, float | None]:
    """(seconds of the warm-up pass ``step``, mean seconds of ``passes`` calls of ``timed``, by
    default ``step`` again, and their mean CPU seconds: every thread of this process); either part is
    skipped when ``step`` is None or ``passes`` is 0."""
    first = None
    if step is not None:
        start = time.perf_counter()
        step()
        first = round(time.perf_counter() - start, 2)
    if passes == 0:
        return first, None, None
    timed = timed or step
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(passes):
        timed()
    return (first, round((time.perf_counter() - start) / passes, 3),
            round((time.process_time() - cpu_start) / passes, 3))


def _peak_fraction(gflops: float, peak: float | None) -> float | None:
    """The share of the GEMM peak, where there is one (bf16 only where the CPU has native bf16)."""
    return None if peak is None else round(gflops / peak, 3)


class ReferenceModel:
    """DeepMind's JAX model configured as docs/reference.md says (fp32, no zero-init, no sub-batching;
    the monomer with unfused triangle weights, the multimer with BERT masking off and the sample sizes
    of the bench's preset), one recycling pass with fp32 zero ``prev``: ``step_fn`` compiles it ahead
    of time and returns (the pass, seconds XLA took to compile it)."""

    def step_fn(self, flat, features, blocks: int = 48, preset: Preset | None = None):
        import haiku as hk  # deferred: an optional dependency (the reference extra)
        import jax
        from alphafold.model import modules as af_modules
        from alphafold.model import modules_multimer as af_multimer

        preset = preset or get_preset(PRESET)
        multimer = preset.multimer
        # The bench's preset is a shortened copy: the reference's config is its base preset's.
        cfg = reference_config(preset.name, evoformer_blocks=blocks)
        if multimer:
            cfg.model.embeddings_and_evoformer.num_msa = preset.num_msa_clusters
            cfg.model.embeddings_and_evoformer.num_extra_msa = preset.max_extra_msa

        def forward(batch, prev):
            network = af_multimer.AlphaFold(cfg.model) if multimer else af_modules.AlphaFold_noE(cfg.model)
            return network({**batch, "prev": prev}, is_training=False, return_representations=True)

        params = reference_params(flat, preset.name)
        # The multimer example has no recycle axis; the monomer's processed features have one.
        batch = dict(features) if multimer else {k: v[0] for k, v in features.items()}
        length = batch["aatype"].shape[0]
        prev = {"prev_msa_first_row": np.zeros([length, 256], np.float32),
                "prev_pair": np.zeros([length, length, 128], np.float32),
                "prev_pos": np.zeros([length, 37, 3], np.float32)}
        key = jax.random.PRNGKey(0)
        start = time.perf_counter()
        step = jax.jit(hk.transform(forward).apply).lower(params, key, batch, prev).compile()
        compile_s = round(time.perf_counter() - start, 2)
        return (lambda: jax.block_until_ready(step(params, key, batch, prev))), compile_s


# Per-module breakdown: the children of every block and the top-level parts, summed by name.
_BREAKDOWN_PARENTS = ("EvoformerIteration", "TemplatePairBlock")
_BREAKDOWN_TOP = ("template_embedding", "structure_module", "distogram_head", "masked_msa_head",
                  "experimentally_resolved_head", "predicted_lddt_head", "predicted_aligned_error_head")


def module_breakdown(length: int, args, precision: str) -> tuple[dict[str, float], dict[str, dict]]:
    """Seconds per module kind for one af2cpu pass at ``length`` (after a warm-up pass), and the same
    pass's time by kind of work (:func:`timed_work`)."""
    model, _, features, shape = bench_inputs(length, args)
    model.set_options(options(precision, shape, preset=model.preset))
    model.predict(features, num_recycle=0, return_representations=False)
    totals: dict[str, float] = {}
    handles = []

    def timed(name, module):
        def pre(*_):
            module._bench_start = time.perf_counter()

        def post(*_):
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - module._bench_start

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    iteration = model.alphafold_iteration
    for name, module in iteration.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if type(module).__name__ in _BREAKDOWN_PARENTS:
            stack = "extra_msa_stack" if ".extra_msa_stack." in f".{name}." else (
                "template_pair_stack" if "template" in name else "evoformer")
            for child_name, child in module.named_children():
                timed(f"{stack}/{child_name}", child)
        elif leaf in _BREAKDOWN_TOP:
            timed(leaf, module)
    with timed_work() as work:
        start = time.perf_counter()
        model.predict(features, num_recycle=0, return_representations=False)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    totals = {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    totals["total"] = round(total, 3)
    return totals, work.summary(total)


def _einsum_flop(args, out) -> int:
    """2 flops per multiply-add of a two-operand einsum: the product of every index's size."""
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    sizes = {}
    for letters, operand in zip(equation.split("->")[0].split(","), operands):
        sizes.update(zip(letters.strip(), operand.shape))
    return 2 * math.prod(sizes.values()) if len(operands) == 2 else 0


def _product_flop(args, out) -> int:
    """2 flops per multiply-add of a product whose left operand is ``args[0]``: each output element sums
    as many products as the left operand's last axis is long (matmul, @, oneDNN's linear kernel)."""
    return 2 * out.numel() * args[0].shape[-1]


# What timed_work times (and benchmarks/roofline/products_alone.py replays): (module, function name, kind of
# work, flops of a call from its arguments and output).
TIMED_WORK = (
    (torch, "addmm", "matrix products", lambda a, y: _product_flop(a[1:], y)),
    (torch, "mm", "matrix products", _product_flop),
    (torch, "bmm", "matrix products", _product_flop),
    (torch, "matmul", "matrix products", _product_flop),
    (torch.Tensor, "__matmul__", "matrix products", _product_flop),
    (torch, "einsum", "matrix products", _einsum_flop),
    (primitives, "onednn_linear", "matrix products", _product_flop),
    (torch.nn.functional, "scaled_dot_product_attention", "attention kernel",
     lambda a, y: _cpu_attention_flop(a[0].shape, a[1].shape, a[2].shape)),
    (kernels, "attention", "attention kernel", lambda a, y: _cpu_attention_flop(a[0].shape, a[1].shape, a[2].shape)),
    (kernels, "layer_norm", "layer norms", None),
    (torch.nn.functional, "layer_norm", "layer norms", None),
)


class _WorkTimes:
    def __init__(self):
        self.seconds, self.calls, self.flop = {}, {}, {}

    def add(self, kind: str, seconds: float, flop: int) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.flop[kind] = self.flop.get(kind, 0) + flop

    def summary(self, total: float) -> dict[str, dict]:
        """Seconds, calls, GFLOP and GFLOP/s per kind, and ``the rest`` of ``total`` seconds."""
        out = {kind: {"s": round(seconds, 3), "calls": self.calls[kind],
                      "gflop": round(self.flop[kind] / 1e9, 2) if self.flop[kind] else None,
                      "gflops": round(self.flop[kind] / 1e9 / seconds, 1) if self.flop[kind] and seconds else None}
               for kind, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        out["the rest"] = {"s": round(total - sum(self.seconds.values()), 3), "calls": None, "gflop": None,
                           "gflops": None}
        out["total"] = {"s": round(total, 3), "calls": None, "gflop": None, "gflops": None}
        return out


@contextlib.contextmanager
def timed_work():
    """Time the passes run inside by kind of work: the matrix products (PyTorch's products and einsums,
    oneDNN's linear kernel), PyTorch's attention kernel and the layer norms, each call timed around
    itself with its flops counted from its shapes; the rest (element-wise work, copies, Python) is what
    the pass took beyond them. The calls are timed directly because torch.profiler's per-op times
    overstate the products (docs/benchmarks.md, "Quiet, and timed directly"). Calls are not nested: the
    network calls each of these functions itself, never one inside another."""
    times = _WorkTimes()
    originals = []

    def timed(original, kind, count):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            times.add(kind, time.perf_counter() - start, count(args, out) if count else 0)
            return out
        return call

    try:
        for owner, name, kind, count in TIMED_WORK:
            original = getattr(owner, name)
            originals.append((owner, name, original))
            setattr(owner, name, timed(original, kind, count))
        yield times
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def markdown(results: dict) -> str:
    """The results as markdown tables: timings per length and the per-module breakdown."""
    m = results["machine"]
    bf16_kernel = m["kernels"].get("bf16_matmul")
    libraries = results["gemm_peak_gflops"].get("fp32_libraries") or {}
    fp32_libraries = f" ({', '.join(f'{name} {rate}' for name, rate in libraries.items())})" if libraries else ""
    lines = [(f"Machine: {m['cpu']}, {m['threads']} threads, {' '.join(m['isa'])}, torch {m['torch']}"
             + (f", bf16 products oneDNN {bf16_kernel}" if bf16_kernel else "")
             + f", load average {' '.join(map(str, m['load_average']))}; "
             f"GEMM peak {results['gemm_peak_gflops']['fp32']} GFLOP/s fp32{fp32_libraries}, "
             + (f"{results['gemm_peak_gflops']['bf16']} GFLOP/s bf16" if results['gemm_peak_gflops']['bf16']
                else "bf16 not native (emulated, not measured)") + f". Preset {results['preset']} "
             f"({results['blocks']} Evoformer blocks), "
             + (f"a shallow MSA of {results['msa_rows'] + results['extra_rows']} sequences padded to "
                "AlphaFold2's default 508 clusters, 5120 extra rows and 4 template slots (GFLOP: af2cpu's "
                "work without the padding); " if results.get("default_msa_sizes") else
                _multimer_inputs_line(results) if results.get("chains") else
                f"{results['msa_rows']} MSA + {results['extra_rows']} extra rows, 4 masked template slots; ")
             + f"one recycling pass, mean of {results['passes']} after a warm-up (the reference's XLA "
             "compilation timed on its own)."), "",
             ("| L | model | precision | compile | compile (s) | first pass (s) | pass (s) | speed-up vs reference "
             "| pass CPU (s) | CPU speed-up | GFLOP | GFLOP/s | of GEMM peak |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def size(length):
        return f"{results['chains']}×{length}" if results.get("chains") else length

    for r in results["runs"]:
        speedup = f"{r['speedup_vs_reference']}x" if "speedup_vs_reference" in r else "—"
        cpu_speedup = f"{r['cpu_speedup_vs_reference']}x" if "cpu_speedup_vs_reference" in r else "—"
        compiled = "XLA" if r["model"] == "reference" else ("yes" if r["compile"] else "no")
        compile_s = "—" if r.get("compile_s") is None else r["compile_s"]
        first = "—" if r["first_pass_s"] is None else r["first_pass_s"]
        share = "—" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f} %"
        model = r["model"] if r.get("backend", "native") == "native" else f"{r['model']} ({r['backend']})"
        if r.get("fp32_products", "auto") != "auto":
            model += f" [{r['fp32_products']} products]"
        if r.get("attention", "auto") != "auto":
            model += f" [{r['attention']} attention]"
        if r.get("elementwise", "auto") != "auto":
            model += f" [{r['elementwise']} element-wise]"
        lines.append(f"| {size(r['length'])} | {model} | {r['precision']} | {compiled} | {compile_s} | {first} "
                     f"| {r['pass_s']} | {speedup} | {r.get('pass_cpu_s', '—')} | {cpu_speedup} | {r['gflop']} "
                     f"| {r['gflops']} | {share} |")
    for precision, totals in results.get("breakdown", {}).items():
        lines += ["", (f"Per-module time, af2cpu {precision}, L={size(results['breakdown_length'])}, one pass "
                  f"(total {totals['total']} s; template_embedding includes template_pair_stack/*):"), "",
                  "| module | s | share |", "| --- | --- | --- |"]
        for name, seconds in totals.items():
            if name != "total":
                lines.append(f"| {name} | {seconds} | {100 * seconds / totals['total']:.1f} % |")
    peaks = results["gemm_peak_gflops"]
    for precision, work in results.get("work_breakdown", {}).items():
        total = work["total"]["s"]
        lines += ["", (f"Time by kind of work, af2cpu {precision}, the same pass (total {total} s; each call timed "
                       "around itself, the rest is element-wise work, copies and Python):"), "",
                  "| work | s | share | calls | GFLOP | GFLOP/s | of GEMM peak |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind, w in work.items():
            if kind == "total":
                continue
            peak = peaks.get(precision)
            share = f"{100 * w['gflops'] / peak:.0f} %" if w["gflops"] and peak else "—"
            lines.append(f"| {kind} | {w['s']} | {100 * w['s'] / total:.1f} % | {w['calls'] or '—'} "
                         f"| {w['gflop'] or '—'} | {w['gflops'] or '—'} | {share} |")
    return "\n".join(lines) + "\n"


def _multimer_inputs_line(results: dict) -> str:
    return (f"a heteromer of {results['chains']} chains × L residues (DeepMind's multimer example, "
            f"make_multimer_inputs): {results['msa_rows']} sampled MSA rows + {results['extra_rows']} extra rows, "
            "paired and unpaired, 4 template slots (one synthetic template), BERT masking off; ")
