"""`af2cpu relax in.pdb --out relaxed.pdb [relax.key=value ...]`: AlphaFold2's Amber relaxation of one structure.

Writes the relaxed structure (hydrogens included, B-factors of the input kept per residue) and a
JSON report next to it (energies, RMSD to the input, violations before and after, attempts, time).
If relaxation fails, the unrelaxed structure is written, the report says why, and the exit status
is 1. The output folders are checked before any work. Settings are the `relax` config group's (AlphaFold2's defaults), e.g.
`relax.max_outer_iterations=20 relax.timeout_s=120`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from af2cpu.config import compose_config
from af2cpu.errors import InputError
from af2cpu.io import atomic_write_text
from af2cpu.runtime.threads import threads_for

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pdb", help="structure to relax (PDB format, one model)")
    parser.add_argument("--out", required=True, help="where to write the relaxed PDB")
    parser.add_argument(
        "--report", default=None, help="where to write the JSON report (default: --out with .json)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OpenMM CPU threads (default: relax.threads, or all CPUs this process may use if that is 0)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. relax.stiffness=10 relax.timeout_s=60"
    )


def _check_writable(path: Path, what: str) -> None:
    """Refuse, before relaxing, an output whose folder is missing or not writable, or that is a folder."""
    folder = path.parent
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name, e.g. {path / 'relaxed.pdb'}")
    if not folder.is_dir():
        raise InputError(f"the folder of {what} {path} does not exist; create it (mkdir -p {folder}) or choose "
                         "another path")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {what} {path}: its folder {folder} is not writable")


def _energy(value: float | None) -> str:
    """An energy for the log line; None (atoms on top of each other: not finite) says so."""
    return "not finite" if value is None else f"{value:.1f}"


def run(args: argparse.Namespace) -> int:
    from af2cpu.relax import relax  # deferred: OpenMM, which the rest of the CLI does not need

    cfg = compose_config(list(args.overrides))
    config = cfg.relax
    path = Path(args.pdb)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the structure {path}: {exc}") from None
    out = Path(args.out)
    report_path = Path(args.report) if args.report else out.with_suffix(".json")
    _check_writable(out, "--out")
    _check_writable(report_path, "--report")
    threads = args.threads or threads_for(int(config.threads))
    try:
        pdb_text, report = relax(text, config, threads=threads)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    atomic_write_text(out, pdb_text)
    atomic_write_text(report_path, json.dumps({"input": str(path), **report.to_dict()}, indent=2) + "\n")
    if not report.relaxed:
        log.error(
            "relaxation of %s failed, wrote the unrelaxed structure to %s: %s", path, out, report.failure
        )
        return 1
    log.info(
        "relaxed %s in %.1f s (%d rounds): energy %s -> %s kcal/mol, RMSD %.3f Å, violating residues %d -> %d",
        path,
        report.seconds,
        report.rounds,
        _energy(report.initial_energy),
        _energy(report.final_energy),
        report.rmsd,
        report.violations_before["residues"],
        report.violations_after["residues"],
    )
    if "interchain_clash" in report.violations_before:  # a complex: what happens between its chains
        log.info(
            "%s: inter-chain clashes %d -> %d, broken peptide bonds %d -> %d",
            path,
            report.violations_before["interchain_clash"],
            report.violations_after["interchain_clash"],
            report.violations_before["broken_peptide_bonds"],
            report.violations_after["broken_peptide_bonds"],
        )
    return 0
