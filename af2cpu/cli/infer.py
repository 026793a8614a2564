"""`af2cpu infer seq.fasta --out DIR [overrides]`: the models, ranking and relaxation of a split workflow.

Reads each target's ``DIR/<target id>/features.npz`` written earlier by `af2cpu features` (on CPU-only or
other nodes) and runs no search; everything else, outputs and options included, is `af2cpu predict`'s,
in the same folder and stage cache, so the files equal those of a one-shot `predict`. Relax later or
again with `af2cpu infer ... relax=all`: finished inference is reused.
"""

from __future__ import annotations

import argparse

from af2cpu.cli import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    predict.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return predict.run(args, require_features=True)
