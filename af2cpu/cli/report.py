"""`af2cpu report DIR`: where a batch stands — per target done, failed or pending, stage times, best model.

Works from the output folder alone (no FASTA needed), so it can run while array tasks are still
writing into it. Writes ``DIR/report.csv`` and ``DIR/report.json`` and prints a table (see
af2cpu.scheduler.report).
"""

from __future__ import annotations

import argparse

from af2cpu.layout import BatchDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="DIR", help="the --out folder of af2cpu predict (or of a job array)")


def run(args: argparse.Namespace) -> int:
    from af2cpu.scheduler.report import report_table, write_report  # deferred: imports the stage list

    reports = write_report(args.out)
    batch = BatchDir(args.out)
    print(report_table(reports), end="")
    print(f"written: {batch.report_csv}, {batch.report_json}")
    return 0
