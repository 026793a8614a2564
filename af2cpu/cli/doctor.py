"""`af2cpu doctor [overrides]`: is this machine ready to predict, and how fast can it be?

Reports Python/torch/numpy versions, the CPU (model, usable cores from the affinity mask, NUMA nodes,
the ISA features that matter for bf16), every external tool with its version, every configured
database file, and the model parameters. What is required follows from the configuration: the tools
and databases of the searches it makes (``af2cpu.preprocessing.searches``), the parameter files of its
models. Exits non-zero when something `predict` needs is missing, with what to do about it.
"""

from __future__ import annotations

import argparse
import os
import platform

from af2cpu import __version__
from af2cpu.cli.db import database_report
from af2cpu.config import ModelKind, Params, compose_config
from af2cpu.databases import fix_hint
from af2cpu.errors import ConfigError, ToolError
from af2cpu.model.weights import download_hint, missing_params, params_file, preset_names
from af2cpu.preprocessing.binaries import TOOLS, binary_version, find_binary
from af2cpu.preprocessing.searches import required_tools
from af2cpu.runtime.topology import ISA_FLAGS, cpu_info, format_cpulist


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def _report_attention(requested, resolved) -> None:
    """runtime.attention's kernel at each head size, in the precision ``resolved``, and why."""
    import torch  # deferred: torch

    from af2cpu.model import kernels  # deferred: builds the kernels (once per kind of CPU)

    build = kernels.load()
    if build is None:
        print(f"  attention: runtime.attention={requested} -> pytorch (af2cpu's kernels: {kernels.unbuilt_reason()})")
        return
    dtype = torch.bfloat16 if str(resolved) == "bf16" else torch.float32
    choices = []
    for head_size in kernels.ALPHAFOLD_HEAD_SIZES:
        try:
            chosen = "af2cpu" if kernels.uses_kernel(requested, dtype, head_size, head_size) else "pytorch"
        except ConfigError as error:
            chosen = f"error: {error}"
        measured = kernels.speedup(str(resolved), head_size)
        choices.append(f"head size {head_size} {chosen}" + ("" if measured is None else f" ({measured:.2f}x PyTorch's here)"))
    print(f"  attention: runtime.attention={requested}, {resolved}: {', '.join(choices)}; af2cpu's build {build}, "
          f"auto takes it from {kernels.SPEEDUP_NEEDED}x")


def _report_elementwise(requested, resolved) -> None:
    """runtime.elementwise's kernels (layer norms, gates) in the precision ``resolved``, and why."""
    import torch  # deferred: torch

    from af2cpu.model import kernels  # deferred: builds the kernels (once per kind of CPU)

    if kernels.load() is None:
        print(f"  element-wise: runtime.elementwise={requested} -> pytorch (af2cpu's kernels: {kernels.unbuilt_reason()})")
        return
    try:
        dtype = torch.bfloat16 if str(resolved) == "bf16" else torch.float32
        chosen = "af2cpu" if kernels.uses_elementwise(requested, dtype) else "pytorch"
    except ConfigError as error:
        chosen = f"error: {error}"
    measured = kernels.elementwise_speedup(str(resolved))
    print(f"  element-wise (layer norms, gates): runtime.elementwise={requested}, {resolved}: {chosen}"
          + ("" if measured is None else f" (af2cpu's {measured:.2f}x PyTorch's here)"))


def _report_kernels(cfg) -> None:
    """What runtime.precision resolves to here, the matrix kernels in use and short GEMM peaks."""
    from af2cpu.bench.machine import gemm_peak, kernel_info  # deferred: torch
    from af2cpu.runtime import precision, products
    from af2cpu.runtime.threads import THREAD_VARIABLES, WAIT_VARIABLES, threads_for

    resolved = precision.resolve_precision(cfg.runtime.precision)
    units = precision.bf16_units()
    cap = precision.onednn_cap()
    speedup = precision.bf16_speedup()
    measured = "" if speedup is None else (
        f", its products {speedup:.2f}x fp32's here" + ("" if speedup >= precision.BF16_SPEEDUP_NEEDED else
                                                         f", under the {precision.BF16_SPEEDUP_NEEDED}x auto needs"))
    why = (f"native bf16: {units}{measured}" if units else "no native bf16: bf16 would be emulated") + (
        f"; oneDNN capped by {cap}" if cap else "")
    print(f"  precision: runtime.precision={cfg.runtime.precision} -> {resolved} ({why})")
    library = products.resolve_products(cfg.runtime.fp32_products)
    onednn = products.onednn_speedup()
    print(f"  fp32 products: runtime.fp32_products={cfg.runtime.fp32_products} -> {library} ("
          + ("no oneDNN linear kernel in this PyTorch" if onednn is None else
             f"oneDNN {onednn:.2f}x MKL's speed here; auto takes oneDNN from {products.ONEDNN_SPEEDUP_NEEDED}x") + ")")
    _report_attention(cfg.runtime.attention, resolved)
    _report_elementwise(cfg.runtime.elementwise, resolved)
    k = kernel_info()
    print(f"  kernels: torch BLAS {k['torch_blas']}, oneDNN {k['onednn'] or 'absent'}, CPU capability "
          f"{k['cpu_capability']}; numpy BLAS {k['numpy_blas']}"
          + (f"; bf16 products: oneDNN {k['bf16_matmul']}" if k["bf16_matmul"] else ""))
    threads = threads_for(int(cfg.runtime.threads))
    # What this process runs with: the CLI chose the wait for its CPUs at start (prepare_process).
    running = {name: os.environ[name] for name in (*THREAD_VARIABLES, *WAIT_VARIABLES) if os.environ.get(name)}
    env = " ".join(f"{name}={value}" for name, value in running.items())
    print(f"  threads: {threads} ({env})")
    peak = gemm_peak(size=1024, repeats=3)
    bf16 = f"{peak['bf16']} GFLOP/s bf16" if peak["bf16"] else "bf16 not native (not measured)"
    libraries = ", ".join(f"{name} {rate}" for name, rate in peak["fp32_libraries"].items())
    print(f"  GEMM peak (1024², {threads} threads): {peak['fp32']} GFLOP/s fp32 ({libraries}), {bf16}")


def run(args: argparse.Namespace) -> int:
    import numpy  # deferred: start-up time of the other commands
    import torch

    cfg = compose_config(args.overrides)
    fixes: list[str] = []

    print(f"af2cpu {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}")

    info = cpu_info()
    print(f"cpu: {info.model_name}")
    print(
        f"  usable cores: {len(info.usable_cpus)} (affinity mask {format_cpulist(info.usable_cpus)}, "
        f"{info.physical_cores} physical)"
    )
    nodes = "; ".join(f"node {n}: cpus {format_cpulist(cpus)}" for n, cpus in info.numa_nodes.items())
    print(f"  NUMA nodes: {len(info.numa_nodes)} ({nodes})")
    flags = ", ".join(f"{flag} {'yes' if flag in info.isa_flags else 'no'}" for flag in ISA_FLAGS)
    print(f"  ISA: {flags}")
    print(f"  memory available: {info.memory_available / 2**30:.1f} GiB")
    _report_kernels(cfg)

    needed = required_tools(cfg.db.preset, protocol=cfg.search.protocol)
    print("tools:")
    for name in TOOLS:
        try:
            path = find_binary(name)
            print(f"  ok       {name:10s} {binary_version(name):8s} {path}")
        except ToolError as exc:
            print(f"  {'MISSING' if name in needed else 'absent':8s} {name:10s} {exc}")
            if name in needed:
                fixes.append(str(exc))

    print(f"databases (db={cfg.db.preset}, search={cfg.search.protocol}, root {cfg.db.root}):")
    lines, missing = database_report(cfg.db, cfg.search.protocol)
    print("\n".join(lines))
    fixes += [f"database {s.name}: {s.problem}" for s in missing]
    if missing:
        fixes.append(fix_hint(cfg.db.preset))

    print(f"params ({cfg.params}, {cfg.params_dir}):")
    if cfg.params == Params.random:
        print("  random untrained weights requested (params=random): predictions are not meaningful")
    else:
        # model=auto folds single chains without the multimer's files: their absence only limits complexes.
        kinds = {ModelKind.monomer: [False], ModelKind.multimer: [True]}.get(cfg.model.kind, [False, True])
        for multimer in kinds:
            absent = missing_params(cfg, [multimer])
            for name in preset_names(cfg, multimer):
                print(f"  {'MISSING' if name in absent else 'ok':8s} {params_file(cfg.params_dir, name)}")
            # The hint names where each missing file not in `af2cpu params download` comes from (multimer v1, v2).
            hint = download_hint(cfg.params_dir, absent)
            if absent and multimer and cfg.model.kind == ModelKind.auto:
                print(f"  note: without the multimer parameters only single chains can be folded; {hint}")
            elif absent:
                fixes.append(f"params {', '.join(p.name for p in absent.values())} not in {cfg.params_dir}: {hint}")

    if fixes:
        print(f"\nNOT READY for `af2cpu predict`: {len(fixes)} problem(s)")
        for fix in fixes:
            print(f"  - {fix}")
        return 1
    print("\nready for `af2cpu predict`")
    return 0
