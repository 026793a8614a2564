"""`af2cpu bench`: the model's speed against DeepMind's JAX AlphaFold, side by side in one run.

Both models get the same random parameters in the official format and the same processed features
(a random query of length L, an MSA made from it by point mutations, AlphaFold2's four template slots
all masked), run with the same thread count, and are timed per recycling pass after one warm-up pass
(``first_pass_s``; XLA's compilation of the reference is timed on its own, ``compile_s``, and so is
what torch.compile adds to af2cpu's first pass). ``--default-msa-sizes`` pads both models' inputs to
AlphaFold2's default 508/5120/4 rows, as AlphaFold2's pipeline does for every target; ``--memory``
measures peak RSS against the memory planner instead of time. Work is counted once, on af2cpu's pass, with
``torch.utils.flop_counter`` (matrix products and attention, the useful work: the reference also
computes on the masked template slots), and set against a GEMM peak measured here. The reference is
imported only when the ``reference`` extra is installed.

Results: ``bench.json`` and ``bench.md`` (a markdown table) in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from af2cpu.errors import ConfigError
from af2cpu.outputs import atomic_write_text

PRESET = "model_1_ptm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128],
                        help="sequence lengths to time (default: 64 128; add 256 for the long run)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="af2cpu precisions to time (the reference always runs DeepMind's fp32)")
    parser.add_argument("--msa-rows", type=int, default=64, help="MSA cluster rows (default 64)")
    parser.add_argument("--extra-rows", type=int, default=256, help="extra-MSA rows (default 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both models (default: every CPU of this process's affinity)")
    parser.add_argument("--blocks", type=int, default=48,
                        help="Evoformer blocks of both models (default 48, the real model; fewer for a quick check)")
    parser.add_argument("--passes", type=int, default=1, help="timed recycling passes after the warm-up")
    parser.add_argument("--breakdown-length", type=int, default=None,
                        help="length of the per-module time breakdown (default: the largest length)")
    parser.add_argument("--compile", action="store_true",
                        help="also time af2cpu with torch.compile (compile time reported separately)")
    parser.add_argument("--no-reference", action="store_true", help="time af2cpu only")
    parser.add_argument("--default-msa-sizes", action="store_true",
                        help="give both models AlphaFold2's default input sizes: the MSA (--msa-rows + "
                             "--extra-rows sequences, keep it shallow) padded to 508 clusters, 5120 extra rows "
                             "and 4 templates, as AlphaFold2's pipeline pads every target")
    parser.add_argument("--memory", type=int, nargs="+", metavar="L", default=None,
                        help="instead of timing, measure the peak RSS of one pass at each length L (a fresh "
                             "process each), next to the memory planner's estimate for the chunks it picks "
                             "under --memory-limit")
    parser.add_argument("--memory-limit", default="6G", help="the memory limit the planner plans for (default 6G)")
    parser.add_argument("--memory-blocks", type=int, default=None,
                        help="block-subset mode for lengths too long to run whole: only this many Evoformer "
                             "blocks (peak memory does not depend on the number of blocks, time does)")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for bench.json and bench.md")
    from af2cpu.bench_batch import add_batch_arguments

    add_batch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "batch", None) is not None:
        from af2cpu.bench_batch import run_batch

        return run_batch(args)
    if getattr(args, "memory", None):
        return run_memory(args)
    threads = args.threads or len(os.sched_getaffinity(0))
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    # Before torch/jax start their thread pools: both read these once.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={threads}").strip()
    import torch

    from af2cpu.runtime.allocator import tune_allocator

    tune_allocator()
    torch.set_num_threads(threads)
    reference = None if args.no_reference else _reference_or_none()
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


def machine_info(threads: int) -> dict:
    """What a benchmark ran on: threads, CPUs, CPU model, matrix ISA flags, torch, load average."""
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    names = [line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")]
    return {"threads": threads, "cpus": sorted(os.sched_getaffinity(0)),
            "cpu": names[0] if names else platform.processor() or platform.machine(), "isa": isa,
            "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]}


def _reference_or_none():
    from af2cpu.reference import available

    return _Reference() if available() else None


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of one square ``torch.matmul`` in fp32 and bf16 with the current threads."""
    import torch

    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        peak[name] = round(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9, 1)
    return peak


def make_inputs(length: int, msa_rows: int, extra_rows: int, blocks: int = 48, seed: int = 0,
                default_sizes: bool = False):
    """(model with random official-format parameters, the flat parameters, processed features).

    The features are AlphaFold2's processed features for one pass, with four fully masked template
    slots as AlphaFold2's input pipeline gives a target without template hits. With
    ``default_sizes`` the ``msa_rows + extra_rows`` sequences go through AlphaFold2's default
    settings (up to 508 clusters, 5120 extra rows) and every axis is padded to those sizes."""
    import numpy as np

    from af2cpu.common import residue_constants as rc
    from af2cpu.model.alphafold import AlphaFold
    from af2cpu.model.params import load_params, random_params
    from af2cpu.model.presets import get_preset
    from af2cpu.preprocessing.features import msa_features, sequence_features
    from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
    from af2cpu.preprocessing.parsers import Msa

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
        settings = PipelineSettings.from_preset(PRESET, num_recycle=0, pad_to_fixed_size=True)
    else:
        settings = PipelineSettings.from_preset(PRESET, num_recycle=0, num_msa_clusters=msa_rows,
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
    from torch.utils.flop_counter import FlopCounterMode

    from af2cpu.config import _cache_dir
    from af2cpu.model.options import Options

    model, flat, features = make_inputs(length, args.msa_rows, args.extra_rows, args.blocks,
                                        default_sizes=args.default_msa_sizes)
    runs = []
    gflop = None
    modes = [(p, False) for p in args.precisions] + ([(p, True) for p in args.precisions] if args.compile else [])
    for precision, compiled in modes:
        model.set_options(Options(precision=precision, compile=compiled,
                                  compile_cache_dir=_cache_dir("inductor") if compiled else None))
        if gflop is None:  # the first warm-up pass also counts the work (the counter slows it a little)
            with FlopCounterMode(display=False) as counter:
                first, seconds = _time_passes(lambda: model.predict(features, num_recycle=0), 0)
            gflop = counter.get_total_flops() / 1e9
            _, seconds = _time_passes(None, args.passes, lambda: model.predict(features, num_recycle=0))
        else:
            first, seconds = _time_passes(lambda: model.predict(features, num_recycle=0), args.passes)
        runs.append({"model": "af2cpu", "length": length, "precision": precision, "compile": compiled,
                     # torch.compile compiles during the first pass: what it adds to a pass.
                     "compile_s": round(max(0.0, first - seconds), 2) if compiled else None,
                     "first_pass_s": first, "pass_s": seconds, "gflop": round(gflop, 1),
                     "gflops": round(gflop / seconds, 1), "peak_fraction": round(gflop / seconds / peak[precision], 3)})
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


class _Reference:
    """DeepMind's JAX monomer configured as REFERENCE.md says (fp32, no zero-init, no sub-batching,
    unfused triangle weights), one recycling pass with fp32 zero ``prev``: ``step_fn`` compiles it
    ahead of time and returns (the pass, seconds XLA took to compile it)."""

    def step_fn(self, flat, features, blocks: int = 48):
        import haiku as hk
        import jax
        import numpy as np
        from alphafold.model import modules as af_modules
        from alphafold.model import utils as af_utils

        from af2cpu.reference import reference_config

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
    from af2cpu.model.options import Options

    model, _, features = make_inputs(length, args.msa_rows, args.extra_rows, args.blocks,
                                     default_sizes=args.default_msa_sizes)
    model.set_options(Options(precision=precision))
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


def run_memory(args: argparse.Namespace) -> int:
    """Peak RSS of one af2cpu pass at each length, each in a fresh process, against the planner.

    For each length and precision the memory planner picks the chunk sizes for ``--memory-limit``
    (as ``af2cpu predict`` does with ``runtime.memory_limit``); a child process builds the inputs,
    resets its peak-RSS counter, runs one recycling pass with those chunks and reports the pass's
    peak RSS (VmHWM). Results: ``memory.json`` and ``memory.md`` in ``--out``.
    """
    import multiprocessing

    from af2cpu.model.memory import TargetShape, choose_chunks
    from af2cpu.model.presets import get_preset
    from af2cpu.runtime.memory import GIB, parse_memory_limit

    threads = args.threads or len(os.sched_getaffinity(0))
    limit = parse_memory_limit(args.memory_limit)
    blocks = args.memory_blocks or args.blocks
    # The model the child builds (make_inputs): the planner counts its blocks and weights.
    architecture = get_preset(PRESET).with_blocks(evoformer=blocks).architecture
    context = multiprocessing.get_context("spawn")
    rows = []
    for length in sorted(args.memory):
        for precision in args.precisions:
            chunks, estimate = choose_chunks(limit, TargetShape(length, args.msa_rows, args.extra_rows, 0),
                                             precision, architecture=architecture)
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_memory_child, args=(
                send, length, precision, dataclasses.asdict(chunks), args.msa_rows, args.extra_rows, blocks, threads))
            child.start()
            send.close()
            try:
                measured = receive.recv()
            except EOFError:
                measured = None
            child.join()
            if measured is None:
                measured = {"error": f"the child process died (exit code {child.exitcode}); out of memory?"}
            row = {"length": length, "precision": precision, "blocks": blocks, "memory_limit": limit,
                   "chunks": {k: v for k, v in dataclasses.asdict(chunks).items() if v is not None},
                   "estimate_bytes": estimate.total, "estimate": estimate.describe(), **measured}
            if "peak_rss_bytes" in row:
                row["estimate_error"] = round(row["estimate_bytes"] / row["peak_rss_bytes"] - 1, 3)
            rows.append(row)
            print({k: (round(v / GIB, 3) if k.endswith("_bytes") else v) for k, v in row.items()})
    results = {"machine": machine_info(threads), "preset": PRESET, "msa_rows": args.msa_rows,
               "extra_rows": args.extra_rows, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "memory.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "memory.md", memory_markdown(results))
    print(memory_markdown(results))
    return 0


def _memory_child(conn, length, precision, chunks, msa_rows, extra_rows, blocks, threads) -> None:
    """One pass in this (fresh) process; sends its peak RSS and time through ``conn``."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from af2cpu.model.options import ChunkSizes, Options
    from af2cpu.runtime.allocator import tune_allocator

    tune_allocator()
    torch.set_num_threads(threads)
    model, flat, features = make_inputs(length, msa_rows, extra_rows, blocks)
    del flat  # a real run keeps one copy of the weights, the model's
    model.set_options(Options(chunks=ChunkSizes(**chunks), precision=precision))
    baseline = _rss("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    model.predict(features, num_recycle=0)
    seconds = time.perf_counter() - start
    conn.send({"peak_rss_bytes": _rss("VmHWM"), "rss_before_pass_bytes": baseline,
               "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
               "peak_counter_reset": reset, "pass_s": round(seconds, 1)})
    conn.close()


def _rss(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: 5 in /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_markdown(results: dict) -> str:
    """The memory runs as a markdown table."""
    gib = 1 << 30
    lines = [(f"Peak RSS of one recycling pass, {results['msa_rows']} MSA + {results['extra_rows']} extra rows, "
              f"{results['machine']['threads']} threads; the planner's chunks for the memory limit."), "",
             ("| L | precision | blocks | chunks | planner estimate (GiB) | measured peak RSS (GiB) | estimate error "
              "| pass (s) |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        chunks = ", ".join(f"{k}={v}" for k, v in r["chunks"].items()) or "none"
        if "peak_rss_bytes" not in r:
            lines.append(f"| {r['length']} | {r['precision']} | {r['blocks']} | {chunks} | "
                         f"{r['estimate_bytes'] / gib:.2f} | {r.get('error', '?')} | | |")
            continue
        lines.append(f"| {r['length']} | {r['precision']} | {r['blocks']} | {chunks} | {r['estimate_bytes'] / gib:.2f} "
                     f"| {r['peak_rss_bytes'] / gib:.2f} | {100 * r['estimate_error']:+.0f} % | {r['pass_s']} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The results as markdown tables: timings per length and the per-module breakdown."""
    m = results["machine"]
    lines = [(f"Machine: {m['cpu']}, {m['threads']} threads, {' '.join(m['isa'])}, torch {m['torch']}; "
             f"GEMM peak {results['gemm_peak_gflops']['fp32']} GFLOP/s fp32, "
             f"{results['gemm_peak_gflops']['bf16']} GFLOP/s bf16. Preset {results['preset']} "
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
        lines.append(f"| {r['length']} | {r['model']} | {r['precision']} | {compiled} | {compile_s} | {first} "
                     f"| {r['pass_s']} | {speedup} | {r['gflop']} | {r['gflops']} | {100 * r['peak_fraction']:.0f} % |")
    for precision, totals in results.get("breakdown", {}).items():
        lines += ["", (f"Per-module time, af2cpu {precision}, L={results['breakdown_length']}, one pass "
                  f"(total {totals['total']} s):"), "", "| module | s | share |", "| --- | --- | --- |"]
        for name, seconds in totals.items():
            if name != "total":
                lines.append(f"| {name} | {seconds} | {100 * seconds / totals['total']:.1f} % |")
    return "\n".join(lines) + "\n"
