"""Database commands: `af2cpu db check [overrides]` validates a database root against the layout."""

from __future__ import annotations

import argparse

from af2cpu.config import compose_config
from af2cpu.databases import check_databases, fix_hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate the configured databases (e.g. db=full db.root=/data/af2)")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides)
    statuses = check_databases(cfg.db)
    preset = cfg.db.preset.value
    print(f"databases: preset {preset}, root {cfg.db.root}")
    for s in statuses:
        label = "ok" if s.ok else ("MISSING" if s.required else "absent")
        detail = s.path if s.ok else s.problem
        print(f"  {label:8s} {s.name:20s} {detail}{'' if s.required else '  (multimer only)'}")
    missing = [s for s in statuses if s.required and not s.ok]
    if missing:
        print(f"{len(missing)} required database(s) missing: {', '.join(s.name for s in missing)}")
        print(f"to fix: {fix_hint(preset)}")
        return 1
    print("all required databases present")
    return 0
