"""The `af2cpu` command line.

Each subcommand is a module of this package exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them together and turns errors a user can act on into one clear line and a
non-zero exit status, never a traceback. SIGTERM (a job scheduler's cancel, `kill`) is handled as
Ctrl-C is: finished stages are kept, the tools still running are killed, the exit status is 143
(130 for Ctrl-C). Command modules import quickly (every one is imported to build
the parser): what is heavy (torch, Dask, the stages) is imported in ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from af2cpu import __version__
from af2cpu.errors import Af2CpuError
from af2cpu.runtime.threads import prepare_process

# (name, one-line help); the command's module is af2cpu.cli.<name>.
COMMANDS = [
    ("predict", "predict structures for a FASTA file: searches, models, relaxation, outputs"),
    ("doctor", "check tools, databases, params and the CPU; exit non-zero if predict cannot run"),
    ("db", "database commands (db check)"),
    ("infer", "models, ranking and relaxation from features.npz made by `af2cpu features`"),
    ("features", "MSA and template search and raw features for a FASTA file"),
    ("relax", "Amber relaxation of one structure (AlphaFold2's protocol)"),
    ("params", "model parameters: download the official ones, or make random ones"),
    ("slurm", "SLURM job arrays: write (and submit) an sbatch script for a FASTA file"),
    ("report", "summarise a batch's output folder: done/failed/pending, times, confidence"),
    ("bench", "time the model against DeepMind's JAX AlphaFold: seconds, speed-up, GFLOP/s"),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="af2cpu",
        description="AlphaFold2 protein structure prediction, fast on CPUs.",
        epilog="Configuration overrides are Hydra key=value pairs, e.g. db=full db.root=/data/af2 "
        "runtime.precision=bf16. Run `af2cpu doctor` to check an installation.",
    )
    parser.add_argument("--version", action="version", version=f"af2cpu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS:
        module = importlib.import_module(f"af2cpu.cli.{name}")
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `af2cpu` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`predict seq.fa --out d db=full`): argparse has by then closed the
    # `overrides` positional, so key=value words left over are appended to it.
    overrides = [word for word in extra if "=" in word and not word.startswith("-")]
    if overrides and hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + overrides
        extra = [word for word in extra if word not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    # Threads and OpenMP's wait policy, before any command imports torch (OpenMP reads them once).
    prepare_process()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return int(args._run(args) or 0)
    except Af2CpuError as exc:
        print(f"af2cpu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"af2cpu {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
