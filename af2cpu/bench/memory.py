"""`af2cpu bench --memory L ...`: peak RSS of one pass per length, each in a fresh process, against
the memory planner's estimate for the chunk sizes it picks (af2cpu.model.memory).

Results: ``memory.json`` and ``memory.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

from af2cpu.bench import MULTIMER_TEMPLATES, PRESET
from af2cpu.io import atomic_write_text
from af2cpu.model.memory import TargetShape, choose_chunks, phase_estimates
from af2cpu.model.options import ChunkSizes, Options
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator
from af2cpu.runtime.memory import GIB, parse_memory_limit
from af2cpu.runtime.threads import threads_for

# Stages whose peak a run also reports (VmHWM when the stage's last module returns), with the planner's
# phases up to the stage's end: the module whose forward ends the stage (its name's last part, or its
# parent's for a stack's last block).
_STAGES = {"templates": ("template_embedding", ("embeddings", "templates")),
           "extra_msa": ("extra_msa_stack", ("embeddings", "templates", "msa_embeddings", "extra_msa"))}


def run_memory(args: argparse.Namespace) -> int:
    """Peak RSS of one af2cpu pass at each length, each in a fresh process, against the planner.

    For each length and precision the memory planner picks the chunk sizes for ``--memory-limit``
    (as ``af2cpu predict`` does with ``runtime.memory_limit``); a child process builds the inputs,
    resets its peak-RSS counter, runs one recycling pass with those chunks and reports the pass's
    peak RSS (VmHWM). Its fp32 products go through the first of ``--fp32-products`` (default auto: the
    library `af2cpu predict` would pick here). Results: ``memory.json`` and ``memory.md`` in ``--out``.
    """
    from af2cpu.bench.machine import machine_info  # deferred: torch (see _memory_child)

    threads = threads_for(args.threads or 0)
    limit = parse_memory_limit(args.memory_limit)
    blocks = args.memory_blocks or args.blocks
    name = getattr(args, "preset", PRESET)
    multimer = get_preset(name).multimer
    chains = args.chains if multimer else 1
    # The model the child builds (make_inputs, make_multimer_inputs): the planner counts its blocks and
    # weights; a complex's residues are those of all its chains, with its 4 template slots.
    architecture = get_preset(name).with_blocks(evoformer=blocks).architecture
    context = multiprocessing.get_context("spawn")
    products = getattr(args, "fp32_products", ["auto"])[0]
    rows = []
    for length in sorted(args.memory):
        for precision in args.precisions:
            templates = MULTIMER_TEMPLATES if multimer else getattr(args, "templates", 0)
            shape = TargetShape(length * chains, args.msa_rows, args.extra_rows, templates)
            # Outputs as `af2cpu predict` keeps them by default (output.save_representations=false).
            chunks, estimate = choose_chunks(limit, shape, precision, architecture=architecture, representations=False)
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_memory_child, args=(
                send, length, precision, dataclasses.asdict(chunks), args.msa_rows, args.extra_rows, blocks, threads,
                name, chains, estimate.compact_outputs, templates, products))
            child.start()
            send.close()
            try:
                measured = receive.recv()
            except EOFError:
                measured = None
            child.join()
            if measured is None:
                measured = {"error": f"the child process died (exit code {child.exitcode}); out of memory?"}
            row = {"length": length, "precision": precision, "fp32_products": products, "blocks": blocks,
                   "memory_limit": limit,
                   "chunks": {k: v for k, v in dataclasses.asdict(chunks).items() if v is not None},
                   "estimate_bytes": estimate.total, "estimate": estimate.describe(), **measured}
            phases = phase_estimates(shape, precision, chunks, architecture=architecture,
                                     compact_outputs=estimate.compact_outputs)
            for stage, (_, stage_phases) in _STAGES.items():
                if f"{stage}_peak_rss_bytes" in row:  # the planner's figure for the same stages
                    row[f"{stage}_estimate_bytes"] = max(phases.get(p, 0) for p in stage_phases)
            if "peak_rss_bytes" in row:
                row["estimate_error"] = round(row["estimate_bytes"] / row["peak_rss_bytes"] - 1, 3)
            rows.append(row)
            print({k: (round(v / GIB, 3) if k.endswith("_bytes") else v) for k, v in row.items()})
    results = {"machine": machine_info(threads), "preset": name, "chains": chains if multimer else None,
               "msa_rows": args.msa_rows, "templates": MULTIMER_TEMPLATES if multimer else getattr(args, "templates", 0),
               "fp32_products": products,
               "extra_rows": args.extra_rows, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "memory.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "memory.md", memory_markdown(results))
    print(memory_markdown(results))
    return 0


def _memory_child(conn, length, precision, chunks, msa_rows, extra_rows, blocks, threads, preset=PRESET,
                  chains=1, compact_outputs=False, templates=0, fp32_products="auto") -> None:
    """One pass in this (fresh) process; sends its peak RSS, time and the library of its fp32 products
    through ``conn``."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch  # deferred: torch reads OMP_NUM_THREADS once, when first imported in this process

    from af2cpu.bench.model import make_inputs, make_multimer_inputs  # deferred: imports torch

    tune_allocator()
    torch.set_num_threads(threads)
    if get_preset(preset).multimer:
        model, flat, features = make_multimer_inputs(length, chains, msa_rows, extra_rows, blocks, preset=preset)
    else:
        model, flat, features = make_inputs(length, msa_rows, extra_rows, blocks, templates=templates)
    del flat  # a real run keeps one copy of the weights, the model's
    options = Options(chunks=ChunkSizes(**chunks), precision=precision, compact_outputs=compact_outputs,
                      fp32_products=fp32_products)
    model.set_options(options)
    # The peak up to the end of the template stage and of the extra-MSA stack, where there are ones.
    through_stages = {}

    def recorder(stage: str):
        def record(*_) -> None:  # a forward hook returning None leaves the module's output alone
            through_stages.setdefault(f"{stage}_peak_rss_bytes", _rss("VmHWM"))
        return record

    for stage, (last, _) in _STAGES.items():
        parts = [(name.split("."), module) for name, module in model.named_modules()]
        ends = [module for p, module in parts if p[-1] == last or (len(p) > 1 and p[-2] == last and p[-1].isdigit())]
        if ends:  # the module itself, or a stack's last block
            ends[-1].register_forward_hook(recorder(stage))
    baseline = _rss("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    model.predict(features, num_recycle=0, return_representations=False)
    seconds = time.perf_counter() - start
    conn.send({"peak_rss_bytes": _rss("VmHWM"), **through_stages, "rss_before_pass_bytes": baseline,
               "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
               "peak_counter_reset": reset, "pass_s": round(seconds, 1),
               "fp32_products_used": "onednn" if options.onednn_products else "mkl"})
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
    chains = results.get("chains")
    complex_ = f"{results['preset']}, complexes of {chains} chains × L residues, " if chains else ""
    lines = [(f"Peak RSS of one recycling pass, {complex_}{results['msa_rows']} MSA + {results['extra_rows']} extra "
              f"rows, {results.get('templates', 0)} templates, {results['machine']['threads']} threads, fp32 products "
              f"{results.get('fp32_products', 'mkl')}; the planner's chunks for the memory limit."), "",
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
    for stage, title in (("templates", "the template stage (embeddings and templates)"),
                         ("extra_msa", "the extra-MSA stack (embeddings, templates, extra-MSA stack)")):
        stages = [r for r in results["runs"] if f"{stage}_estimate_bytes" in r]
        if stages:
            lines += ["", f"Up to the end of {title}:", "",
                      "| L | precision | planner estimate (GiB) | measured peak RSS (GiB) | estimate error |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {r['length']} | {r['precision']} | {r[f'{stage}_estimate_bytes'] / gib:.2f} | "
                      f"{r[f'{stage}_peak_rss_bytes'] / gib:.2f} | "
                      f"{100 * (r[f'{stage}_estimate_bytes'] / r[f'{stage}_peak_rss_bytes'] - 1):+.0f} % |"
                      for r in stages]
    return "\n".join(lines) + "\n"
