"""`af2cpu predict seq.fasta [--out DIR] [key=value ...]`: the whole pipeline on a Dask cluster.

For every FASTA record: MSA and template searches (in parallel), features, every model preset
(`model.names` for a single chain; for a complex, `model.multimer_names`, each
`model.num_predictions_per_model` times), ranking, Amber relaxation (`relax=best|all|none`), and AlphaFold2's output files in
``DIR/<target id>/``, plus a batch summary (``summary.json``, ``summary.tsv``) at the top of DIR.
Finished stages are kept: the same command run again (after a crash, a kill or Ctrl-C) resumes
where it stopped; ``--force`` redoes everything. A target that fails is reported and the others
finish. Exit status: 0 all done, 1 none done, 3 some failed (partial), 2 bad input or setup.
"""

from __future__ import annotations

import argparse
import logging
import os

from af2cpu.cli.features import add_complex_argument
from af2cpu.layout import BatchDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fasta", help="FASTA file with one or many protein sequences")
    parser.add_argument("--out", default="af2cpu_out", help="output folder (default: ./af2cpu_out)")
    parser.add_argument("--force", action="store_true", help="redo every stage, even those already finished")
    parser.add_argument("--precomputed-msas", metavar="DIR",
                        help="folder with <target id>/msas/ from an earlier run, reused when made for the same "
                        "sequence and databases")
    add_complex_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="only errors and the final summary")
    parser.add_argument("--array-index", type=int, metavar="I",
                        help="run only shard I (0-based) of a job array; default: from SLURM/PBS/SGE variables")
    parser.add_argument("--array-count", type=int, metavar="N",
                        help="number of shards of the job array; default: from SLURM/SGE variables")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2 relax=none")


def run(args: argparse.Namespace, require_features: bool = False) -> int:
    # deferred: the batch run imports Dask and the stages, which the rest of the CLI does not need
    from af2cpu.scheduler.batch import array_shard, run_batch

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    shard = array_shard(args.fasta, args.array_index, args.array_count, os.environ)
    result = run_batch(args.fasta, args.out, args.overrides, force=args.force, quiet=args.quiet,
                       precomputed_msas=args.precomputed_msas, targets_filter=shard,
                       require_features=require_features, complex=args.complex)
    for outcome in result.outcomes:
        if outcome.status == "done":
            s = outcome.summary
            ptm = f", pTM {s['ptm']:.3f}" if s.get("ptm") is not None else ""
            ptm += f", ipTM {s['iptm']:.3f}" if s.get("iptm") is not None else ""
            print(f"{outcome.target.id}: done — best {s['best_model']}, mean pLDDT {s['mean_plddt']:.1f}{ptm}")
        else:
            print(f"{outcome.target.id}: FAILED at {outcome.failed_stage}: {outcome.failure}")
    for record in result.invalid_records:
        print(f"invalid record skipped: {record}")
    total = len(result.outcomes) + len(result.invalid_records)
    summary = BatchDir(result.out_dir).summary_tsv
    print(f"{total - len(result.failed)} of {total} target(s) done; summary in {summary}")
    return result.exit_status
