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
import json
import math
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from af2cpu.bench import PRESET
from af2cpu.bench.machine import gemm_peak, machine_info
from af2cpu.bench.reference import available as reference_available
from af2cpu.bench.reference import reference_config
from af2cpu.common import residue_constants as rc
from af2cpu.config import RuntimeConfig, cache_dir
from af2cpu.io import atomic_write_text
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.memory import TargetShape, plan_options
from af2cpu.model.options import Options
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import get_preset
from af2cpu.model.weights import apply_backend
from af2cpu.preprocessing.features import msa_features, sequence_features
from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
from af2cpu.preprocessing.parsers import Msa


def run(args: argparse.Namespace, threads: int) -> int:
    """Time both models at every length of ``args``; write ``bench.json`` and ``bench.md``."""
    torch.set_num_threads(threads)
    reference = ReferenceModel() if not args.no_reference and reference_available() else None
    results = {"machine": machine_info(threads), "preset": PRESET, "blocks": args.blocks, "msa_rows": args.msa_rows,
               "extra_rows": args.extra_rows, "default_msa_sizes": args.default_msa_sizes,
               "passes": args.passes, "gemm_peak_gflops": gemm_peak(),
               "reference": reference is not None, "runs": []}
    print(f"GEMM peak ({threads} threads): {results['gemm_peak_gflops']}")
    for length in args.lengths:
        results["runs"].extend(bench_length(length, args, reference, results["gemm_peak_gflops"]))
    breakdown_length = args.breakdown_length or max(args.lengths)
    results["breakdown"] = {p: module_breakdown(breakdown_length, args, p) for p in args.precisions}
    results["breakdown_length"] = breakdown_length
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "bench.md", markdown(results))
    print(markdown(results))
    return 0


def options(precision: str, shape: TargetShape, compiled: bool = False) -> Options:
    """The run options `af2cpu predict` derives for this shape (af2cpu.model.memory.plan_options), without
    a memory limit: the benchmark times whole intermediates."""
    runtime = RuntimeConfig(precision=precision, compile=compiled, compile_cache_dir=cache_dir("inductor"))
    planned, _ = plan_options(runtime, get_preset(PRESET), shape, limit=1 << 62)
    return planned


def make_inputs(length: int, msa_rows: int, extra_rows: int, blocks: int = 48, seed: int = 0,
                default_sizes: bool = False):
    """(model with random official-format parameters, the flat parameters, processed features).

    The features are AlphaFold2's processed features for one pass, with four fully masked template
    slots as AlphaFold2's input pipeline gives a target without template hits. With
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
    raw.update({"template_aatype": np.zeros((0, length, 22), np.float32),
                "template_all_atom_masks": np.zeros((0, length, 37), np.float32),
                "template_all_atom_positions": np.zeros((0, length, 37, 3), np.float32),
                "template_domain_names": np.zeros((0,), object), "template_sequence": np.zeros((0,), object),
                "template_sum_probs": np.zeros((0, 1), np.float32)})
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


def bench_length(length: int, args, reference, peak: dict) -> list[dict]:
    """Time af2cpu (each precision, eager and optionally compiled) and the reference at one length."""
    model, flat, features = make_inputs(length, args.msa_rows, args.extra_rows, args.blocks,
                                        default_sizes=args.default_msa_sizes)
    runs = []
    gflop = None
    backends = getattr(args, "backends", ["native"])
    modes = [(p, False) for p in args.precisions] + ([(p, True) for p in args.precisions] if args.compile else [])
    for precision, compiled in modes:
        model.set_options(options(precision, TargetShape(length, args.msa_rows, args.extra_rows, 0), compiled))
        first = {}
        for backend in backends:  # a warm-up pass each (the first also counts the work, a little slower)
            apply_backend(model, backend)  # in place, back and forth on the same weights
            if gflop is None:
                with flop_counter() as counter:
                    first[backend], _ = _time_passes(lambda: model.predict(features, num_recycle=0), 0)
                gflop = counter.get_total_flops() / 1e9
            else:
                first[backend], _ = _time_passes(lambda: model.predict(features, num_recycle=0), 0)
        # Several back ends take turns pass by pass, so that a busy machine slows each alike.
        total = dict.fromkeys(backends, 0.0)
        for _ in range(args.passes):
            for backend in backends:
                apply_backend(model, backend)
                start = time.perf_counter()
                model.predict(features, num_recycle=0)
                total[backend] += time.perf_counter() - start
        for backend in backends:
            seconds = round(total[backend] / args.passes, 3)
            runs.append({"model": "af2cpu", "backend": backend, "length": length, "precision": precision,
                         "compile": compiled,
                         # torch.compile compiles during the first pass: what it adds to a pass.
                         "compile_s": round(max(0.0, first[backend] - seconds), 2) if compiled else None,
                         "first_pass_s": first[backend], "pass_s": seconds, "gflop": round(gflop, 1),
                         "gflops": round(gflop / seconds, 1),
                         "peak_fraction": _peak_fraction(gflop / seconds, peak[precision])})
            print(runs[-1])
    if reference is not None:
        step, compile_s = reference.step_fn(flat, features, args.blocks)
        # XLA's compilation is timed on its own; with the padded default sizes a pass takes
        # minutes, so the compiled pass is timed without a further warm-up pass.
        first, seconds = _time_passes(None if args.default_msa_sizes else step, args.passes, step)
        runs.append({"model": "reference", "length": length, "precision": "fp32", "compile": True,
                     "compile_s": compile_s,
                     "first_pass_s": first, "pass_s": seconds, "gflop": round(gflop, 1),
                     "gflops": round(gflop / seconds, 1), "peak_fraction": round(gflop / seconds / peak["fp32"], 3)})
        print(runs[-1])
        for r in runs[:-1]:
            r["speedup_vs_reference"] = round(seconds / r["pass_s"], 2)
    return runs


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Products of CPU flash attention: q·kᵀ and the weighted sum of values, 2 flops per multiply-add."""
    *batch, q_len, c_qk = query_shape
    k_len, c_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * q_len * k_len * (c_qk + c_v)


def flop_counter() -> FlopCounterMode:
    """torch's flop counter, also counting the CPU flash-attention kernel, which it does not know (torch
    2.13): without it the attention's products (about 8 % of a pass at L=128) went uncounted."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop})


def _time_passes(step, passes: int, timed=None) -> tuple[float, float | None]:
    """(seconds of the warm-up pass ``step``, mean seconds of ``passes`` calls of ``timed``, by
    default ``step`` again); either part is skipped when ``step`` is None or ``passes`` is 0."""
    first = None
    if step is not None:
        start = time.perf_counter()
        step()
        first = round(time.perf_counter() - start, 2)
    if passes == 0:
        return first, None
    timed = timed or step
    start = time.perf_counter()
    for _ in range(passes):
        timed()
    return first, round((time.perf_counter() - start) / passes, 3)


def _peak_fraction(gflops: float, peak: float | None) -> float | None:
    """The share of the GEMM peak, where there is one (bf16 only where the CPU has native bf16)."""
    return None if peak is None else round(gflops / peak, 3)


class ReferenceModel:
    """DeepMind's JAX monomer configured as docs/reference.md says (fp32, no zero-init, no sub-batching,
    unfused triangle weights), one recycling pass with fp32 zero ``prev``: ``step_fn`` compiles it
    ahead of time and returns (the pass, seconds XLA took to compile it)."""

    def step_fn(self, flat, features, blocks: int = 48):
        import haiku as hk  # deferred: an optional dependency (the reference extra)
        import jax
        from alphafold.model import modules as af_modules
        from alphafold.model import utils as af_utils

        cfg = reference_config(PRESET, evoformer_blocks=blocks)

        def forward(batch, prev):
            return af_modules.AlphaFold_noE(cfg.model)({**batch, "prev": prev}, is_training=False,
                                                       return_representations=True)

        params = af_utils.flat_params_to_haiku(dict(flat), fuse=False)
        length = features["aatype"].shape[1]
        batch = {k: v[0] for k, v in features.items()}
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


def module_breakdown(length: int, args, precision: str) -> dict[str, float]:
    """Seconds per module kind for one af2cpu pass at ``length`` (after a warm-up pass)."""
    model, _, features = make_inputs(length, args.msa_rows, args.extra_rows, args.blocks,
                                     default_sizes=args.default_msa_sizes)
    model.set_options(options(precision, TargetShape(length, args.msa_rows, args.extra_rows, 0)))
    model.predict(features, num_recycle=0)
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
    start = time.perf_counter()
    model.predict(features, num_recycle=0)
    total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    totals = {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    totals["total"] = round(total, 3)
    return totals


def markdown(results: dict) -> str:
    """The results as markdown tables: timings per length and the per-module breakdown."""
    m = results["machine"]
    bf16_kernel = m["kernels"].get("bf16_matmul")
    lines = [(f"Machine: {m['cpu']}, {m['threads']} threads, {' '.join(m['isa'])}, torch {m['torch']}"
             + (f", bf16 products oneDNN {bf16_kernel}" if bf16_kernel else "")
             + f", load average {' '.join(map(str, m['load_average']))}; "
             f"GEMM peak {results['gemm_peak_gflops']['fp32']} GFLOP/s fp32, "
             + (f"{results['gemm_peak_gflops']['bf16']} GFLOP/s bf16" if results['gemm_peak_gflops']['bf16']
                else "bf16 not native (emulated, not measured)") + f". Preset {results['preset']} "
             f"({results['blocks']} Evoformer blocks), "
             + (f"a shallow MSA of {results['msa_rows'] + results['extra_rows']} sequences padded to "
                "AlphaFold2's default 508 clusters, 5120 extra rows and 4 template slots (GFLOP: af2cpu's "
                "work without the padding); " if results.get("default_msa_sizes") else
                f"{results['msa_rows']} MSA + {results['extra_rows']} extra rows, 4 masked template slots; ")
             + f"one recycling pass, mean of {results['passes']} after a warm-up (the reference's XLA "
             "compilation timed on its own)."), "",
             ("| L | model | precision | compile | compile (s) | first pass (s) | pass (s) | speed-up vs reference "
             "| GFLOP | GFLOP/s | of GEMM peak |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        speedup = f"{r['speedup_vs_reference']}x" if "speedup_vs_reference" in r else "—"
        compiled = "XLA" if r["model"] == "reference" else ("yes" if r["compile"] else "no")
        compile_s = "—" if r.get("compile_s") is None else r["compile_s"]
        first = "—" if r["first_pass_s"] is None else r["first_pass_s"]
        share = "—" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f} %"
        model = r["model"] if r.get("backend", "native") == "native" else f"{r['model']} ({r['backend']})"
        lines.append(f"| {r['length']} | {model} | {r['precision']} | {compiled} | {compile_s} | {first} "
                     f"| {r['pass_s']} | {speedup} | {r['gflop']} | {r['gflops']} | {share} |")
    for precision, totals in results.get("breakdown", {}).items():
        lines += ["", (f"Per-module time, af2cpu {precision}, L={results['breakdown_length']}, one pass "
                  f"(total {totals['total']} s):"), "", "| module | s | share |", "| --- | --- | --- |"]
        for name, seconds in totals.items():
            if name != "total":
                lines.append(f"| {name} | {seconds} | {100 * seconds / totals['total']:.1f} % |")
    return "\n".join(lines) + "\n"
