"""`af2cpu bench --contention`: the same small pass idle and beside a busy process, in one run.

Every (wait policy, condition) pair runs the pass in a fresh process, because OpenMP reads its
variables once, when the runtime starts (when torch is imported). The conditions are *idle* (only
what the machine already runs) and *busy* (one extra process spinning on the last usable CPU, as a
notebook or a search tool beside inference would). The pairs are interleaved round by round, so a
change of the machine's own load hits every variant alike; the figures to read are the ratios
(busy / idle per variant, each variant / the reference where it runs), with the load average of
each measurement next to it.

Variants (docs/benchmarks.md has the measurements that chose the default, ``af2cpu.runtime.threads``):
- ``chosen``: af2cpu's own thread environment, chosen by the pass's process as the CLI chooses it
  (:func:`af2cpu.runtime.threads.prepare_process`: a short spin on idle CPUs, passive on shared ones);
- ``spin``: OpenMP's default (threads spin ~300k iterations before they sleep);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
- ``spin10k``, ``spin1k``, ``spin100``: ``GOMP_SPINCOUNT`` 10000, 1000, 100 (a short spin, then sleep);
- ``fewer``: passive, one thread fewer (the busy core left to the other process);
- ``reference``: DeepMind's JAX pass (XLA's own thread pool), when the ``reference`` extra is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from af2cpu.bench.reference import available as reference_available
from af2cpu.io import atomic_write_text
from af2cpu.runtime.threads import CHOSEN_WAIT_MARK, WAIT_VARIABLES, usable_cpu_count, user_wait_variables

# Child process: build the inputs, one warm-up pass, then `passes` timed passes; print the mean seconds.
_CHILD = """
import json, os, sys, time
length, msa, extra, blocks, passes, threads, which, prepare = json.loads(sys.argv[1])
if prepare:  # af2cpu's own choice, made in this process before OpenMP starts, as the CLI makes it
    from af2cpu.runtime.threads import prepare_process
    prepare_process(threads)
    print(json.dumps({k: v for k, v in os.environ.items() if k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}))
import torch
torch.set_num_threads(threads)
from af2cpu.bench.model import ReferenceModel, make_inputs, options
from af2cpu.model.memory import TargetShape
model, flat, features = make_inputs(length, msa, extra, blocks)
if which == "reference":
    step, _ = ReferenceModel().step_fn(flat, features, blocks)
else:
    model.set_options(options("fp32", TargetShape(length, msa, extra, 0)))
    step = lambda: model.predict(features, num_recycle=0, return_representations=False)
step()
start = time.perf_counter()
for _ in range(passes):
    step()
print(json.dumps({"pass_s": (time.perf_counter() - start) / passes}))
"""

_BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


VARIANT_NAMES = ("chosen", "spin", "passive", "spin10k", "spin1k", "spin100", "fewer", "reference")


def variants(threads: int, reference: bool) -> dict[str, tuple[dict[str, str], int]]:
    """name -> (environment changes, threads) of each variant measured."""
    clear = {name: "" for name in (*WAIT_VARIABLES, CHOSEN_WAIT_MARK)}  # "" = unset in the child
    out = {
        # Decided by the pass's own process (prepare_process), keeping a wait variable the user set.
        "chosen": ({**clear, **user_wait_variables()}, threads),
        "spin": (clear, threads),
        "passive": ({**clear, "OMP_WAIT_POLICY": "PASSIVE"}, threads),
        "spin10k": ({**clear, "GOMP_SPINCOUNT": "10000"}, threads),
        "spin1k": ({**clear, "GOMP_SPINCOUNT": "1000"}, threads),
        "spin100": ({**clear, "GOMP_SPINCOUNT": "100"}, threads),
    }
    if threads > 1:
        out["fewer"] = ({**clear, "OMP_WAIT_POLICY": "PASSIVE"}, threads - 1)
    if reference:
        out["reference"] = (clear, threads)
    return out


def _child_env(changes: dict[str, str], threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        if value == "":
            env.pop(name, None)
        else:
            env[name] = value
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    return env


def _one_pass(args, name: str, changes: dict[str, str], threads: int) -> tuple[float, dict[str, str]]:
    """Seconds a pass, and the wait variables the process chose (``chosen``; else {})."""
    which = "reference" if name == "reference" else "af2cpu"
    spec = json.dumps([args.contention_length, args.msa_rows, args.extra_rows, args.blocks, args.passes,
                       threads, which, name == "chosen"])
    out = subprocess.run([sys.executable, "-c", _CHILD, spec], env=_child_env(changes, threads),
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"contention pass {name} failed:\n{out.stderr[-2000:]}")
    lines = [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]
    return lines[-1]["pass_s"], (lines[0] if name == "chosen" else {})


def run_contention(args) -> int:
    """Measure every variant idle and busy, ``args.rounds`` interleaved rounds; write contention.json/.md."""
    threads = args.threads or usable_cpu_count()
    busy_cpu = max(os.sched_getaffinity(0))
    chosen = variants(threads, not args.no_reference and reference_available())
    if args.variants:
        chosen = {name: value for name, value in chosen.items() if name in args.variants}
    rows: list[dict] = []
    for round_ in range(args.rounds):
        for condition in ("idle", "busy"):
            busy = None
            if condition == "busy":
                busy = subprocess.Popen([sys.executable, "-c", _BUSY, str(busy_cpu)])
                time.sleep(1.0)
            try:
                for name, (changes, n) in chosen.items():
                    seconds, wait = _one_pass(args, name, changes, n)
                    row = {"round": round_, "condition": condition, "variant": name, "threads": n,
                           "pass_s": round(seconds, 3), "load_average": round(os.getloadavg()[0], 2)}
                    if wait:
                        row["wait"] = wait
                    rows.append(row)
                    print(row, flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    results = {"threads": threads, "busy_cpu": busy_cpu, "length": args.contention_length,
               "msa_rows": args.msa_rows, "extra_rows": args.extra_rows, "blocks": args.blocks,
               "passes": args.passes,
               "rows": rows, "summary": summarise(rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "contention.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "contention.md", markdown(results))
    print(markdown(results))
    return 0


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per variant: median idle and busy seconds, busy/idle, and the reference's seconds / the variant's
    (its speed-up over the reference) in each condition, the medians taken per round's ratio."""

    def median(values):
        values = sorted(values)
        n = len(values)
        return None if n == 0 else (values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2)

    seconds = {(r["round"], r["condition"], r["variant"]): r["pass_s"] for r in rows}
    rounds = sorted({r["round"] for r in rows})
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        entry = {}
        for condition in ("idle", "busy"):
            entry[f"{condition}_s"] = median([seconds[k] for k in seconds if k[1:] == (condition, name)])
            speedups = [seconds[(i, condition, "reference")] / seconds[(i, condition, name)] for i in rounds
                        if (i, condition, "reference") in seconds and (i, condition, name) in seconds]
            entry[f"{condition}_vs_reference"] = None if not speedups else round(median(speedups), 2)
        slowdowns = [seconds[(i, "busy", name)] / seconds[(i, "idle", name)] for i in rounds
                     if (i, "busy", name) in seconds and (i, "idle", name) in seconds]
        entry["busy_over_idle"] = None if not slowdowns else round(median(slowdowns), 2)
        summary[name] = entry
    return summary


def markdown(results: dict) -> str:
    """The summary as a markdown table."""
    lines = [(f"L={results['length']}, {results['msa_rows']} + {results['extra_rows']} rows, {results['blocks']} "
             f"blocks, {results['threads']} threads, busy process on CPU {results['busy_cpu']}; median of "
             f"{len({r['round'] for r in results['rows']})} interleaved rounds, {results['passes']} pass(es) each; "
             f"load average {min(r['load_average'] for r in results['rows'])}-"
             f"{max(r['load_average'] for r in results['rows'])}."), "",
             "| variant | idle (s) | busy (s) | busy / idle | vs reference, idle | vs reference, busy |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, e in results["summary"].items():
        def cell(value, suffix=""):
            return "-" if value is None else f"{value:.2f}{suffix}"
        lines.append(f"| {name} | {cell(e['idle_s'])} | {cell(e['busy_s'])} | {cell(e['busy_over_idle'], '×')} | "
                     f"{cell(e['idle_vs_reference'], '×')} | {cell(e['busy_vs_reference'], '×')} |")
    return "\n".join(lines) + "\n"
