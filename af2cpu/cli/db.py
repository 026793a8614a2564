"""Database commands: `af2cpu db check [overrides]` validates a database root against the layout.

The databases a run needs are those its searches read (``af2cpu.preprocessing.searches``); the others
of the catalogue (``af2cpu.databases``) are listed with what would use them.
"""

from __future__ import annotations

import argparse

from af2cpu.config import compose_config
from af2cpu.databases import CATALOGUE, DbStatus, check_databases, fix_hint, mmseqs_indexed
from af2cpu.preprocessing.searches import MONOMER, MULTIMER, required_databases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate the configured databases (e.g. db=full db.root=/data/af2)")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def database_report(db, protocol: str) -> tuple[list[str], list[DbStatus]]:
    """The lines `doctor` and `db check` print for the configured databases (``db`` section) with search
    protocol ``protocol``, and the required ones that are missing."""
    required = required_databases(db.preset, MONOMER, protocol)
    multimer = required_databases(db.preset, MULTIMER, protocol) - required
    lines = []
    statuses = check_databases(db, required)
    for s in statuses:
        label = "ok" if s.ok else ("MISSING" if s.required else "absent")
        use = "" if s.required else ("  (multimer only)" if s.name in multimer else
                                     f"  ({CATALOGUE[s.name].about}; not used by this configuration)")
        if s.ok and CATALOGUE[s.name].kind == "mmseqs" and not mmseqs_indexed(s.path):
            use += "  (unindexed: searched directly, as the mini databases are)"
        lines.append(f"  {label:8s} {s.name:20s} {s.path if s.ok else s.problem}{use}")
    return lines, [s for s in statuses if s.required and not s.ok]


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides)
    print(f"databases: preset {cfg.db.preset}, search {cfg.search.protocol}, root {cfg.db.root}")
    lines, missing = database_report(cfg.db, cfg.search.protocol)
    print("\n".join(lines))
    if missing:
        print(f"{len(missing)} required database(s) missing: {', '.join(s.name for s in missing)}")
        print(f"to fix: {fix_hint(cfg.db.preset)}")
        return 1
    print("all required databases present")
    return 0
