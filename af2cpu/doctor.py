"""`af2cpu doctor [overrides]`: is this machine ready to predict, and how fast can it be?

Reports Python/torch/numpy versions, the CPU (model, usable cores from the affinity mask, NUMA nodes,
the ISA features that matter for bf16), every external tool with its version, every configured
database file, and the model parameters. Exits non-zero when something `predict` needs is missing,
with what to do about it.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from af2cpu import __version__
from af2cpu.config import compose_config
from af2cpu.databases import check_databases, fix_hint
from af2cpu.errors import ToolError
from af2cpu.preprocessing.binaries import TOOLS, binary_version, find_binary

# Tools a monomer `predict` needs per database preset (hmmsearch/hmmbuild serve multimer templates).
REQUIRED_TOOLS = {
    "full": {"jackhmmer", "hhblits", "hhsearch", "kalign"},
    "mini": {"jackhmmer", "hhblits", "hhsearch", "kalign"},
    "reduced": {"jackhmmer", "hhsearch", "kalign"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def _params_files(params_dir: str, names: list[str]) -> list[Path]:
    return [Path(params_dir) / f"params_{name}.npz" for name in names]


def run(args: argparse.Namespace) -> int:
    import numpy
    import torch

    from af2cpu.runtime.topology import ISA_FLAGS, cpu_info, format_cpulist

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

    preset = cfg.db.preset.value
    print("tools:")
    for name in TOOLS:
        required = name in REQUIRED_TOOLS[preset]
        try:
            path = find_binary(name)
            print(f"  ok       {name:10s} {binary_version(name):8s} {path}")
        except ToolError as exc:
            print(f"  {'MISSING' if required else 'absent':8s} {name:10s} {exc}")
            if required:
                fixes.append(str(exc))

    print(f"databases (db={preset}, root {cfg.db.root}):")
    for s in check_databases(cfg.db):
        label = "ok" if s.ok else ("MISSING" if s.required else "absent")
        print(f"  {label:8s} {s.name:20s} {s.path if s.ok else s.problem}")
        if s.required and not s.ok:
            fixes.append(f"database {s.name}: {s.problem}")
    if any(s.required and not s.ok for s in check_databases(cfg.db)):
        fixes.append(fix_hint(preset))

    print(f"params ({cfg.params}, {cfg.params_dir}):")
    if cfg.params == "random":
        print("  random untrained weights requested (params=random): predictions are not meaningful")
    else:
        missing = []
        for path in _params_files(cfg.params_dir, list(cfg.model.names)):
            present = path.is_file()
            print(f"  {'ok' if present else 'MISSING':8s} {path}")
            if not present:
                missing.append(path.name)
        if missing:
            fixes.append(
                f"params {', '.join(missing)} not in {cfg.params_dir}: run `af2cpu params download "
                f"--dest {cfg.params_dir}` (or set params_dir=/path/to/params, or AF2CPU_PARAMS_DIR), "
                "or run with params=random for an untrained smoke test"
            )

    if fixes:
        print(f"\nNOT READY for `af2cpu predict`: {len(fixes)} problem(s)")
        for fix in fixes:
            print(f"  - {fix}")
        return 1
    print("\nready for `af2cpu predict`")
    return 0
