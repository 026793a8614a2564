"""`af2cpu features seq.fasta --out DIR [key=value ...]`: MSAs, template hits and raw features.

For every FASTA record, writes ``DIR/<target id>/msas/`` (uniref90_hits.sto, mgnify_hits.sto,
bfd_uniref_hits.a3m or small_bfd_hits.sto, pdb_hits.hhr, each with a JSON of what produced it) and
``DIR/<target id>/features.npz``: the search and features stages that `af2cpu predict` schedules, run
one after another in this process. Results already in the output folder, or in the folder given with
``--precomputed-msas``, are reused when they were made for the same sequence and databases. Each
target is locked while its stages run, as `af2cpu predict` locks it, so two runs sharing an output
folder never work on the same target at once (the second reports it and goes on). A target that fails
is reported in one line (the full error is in ``DIR/<target id>/af2cpu.log``) and the others go on;
the exit status is non-zero if any failed.

A record with chains separated by ``:`` (or, with ``--complex``, the whole file) is a complex: each
distinct chain is searched once (``msas/<chain id>/``, AlphaFold-Multimer's searches: the monomer MSAs,
jackhmmer on UniProt for pairing, hmmsearch on pdb_seqres for templates) and ``features.npz`` is
AlphaFold-Multimer's example (paired and merged MSAs, ``asym_id``/``entity_id``/``sym_id``, templates).
"""

from __future__ import annotations

import argparse

from af2cpu.config import compose_config
from af2cpu.errors import Af2CpuError
from af2cpu.layout import BatchDir, precomputed_msas
from af2cpu.preprocessing.inputs import chains_json, read_fasta_targets


def add_complex_argument(parser: argparse.ArgumentParser) -> None:
    """``--complex``: the whole FASTA file is one complex (AlphaFold2's multimer input)."""
    parser.add_argument(
        "--complex", action="store_true",
        help="the whole FASTA file is one complex, one chain per record (as AlphaFold2's multimer input); "
        "without it, a record whose chains are separated by ':' is a complex (as ColabFold's)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fasta", help="FASTA file with one or more protein sequences")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per target)")
    parser.add_argument(
        "--cpus",
        type=int,
        default=0,
        help="CPUs per search tool (default: search.cpus, else all allotted CPUs)",
    )
    parser.add_argument(
        "--precomputed-msas",
        default=None,
        help="folder with earlier results (<dir>/<target id>/msas/ or <dir>/<target id>/); used only "
        "when made for the same sequence and databases",
    )
    add_complex_argument(parser)
    parser.add_argument(
        "--no-reuse", action="store_true", help="rerun every search even if a valid result exists"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def run(args: argparse.Namespace) -> int:
    # deferred: the stages import every stage package, which the other commands need not load
    from af2cpu.scheduler.batch import check_before_work
    from af2cpu.scheduler.cache import StageCache
    from af2cpu.scheduler.graph import log_failure
    from af2cpu.scheduler.stages import StageContext, folding_target, run_features_in_process

    overrides = list(args.overrides) + ([f"search.cpus={args.cpus}"] if args.cpus else [])
    cfg = compose_config(overrides)
    check_before_work(cfg, models=False)
    # model=multimer: single chains get AlphaFold-Multimer's features too (complexes of one chain).
    targets = [folding_target(cfg, t) for t in read_fasta_targets(args.fasta, complex=args.complex)]
    if args.complex and targets and len(targets[0].chains) == 1:
        print(f"note: --complex with a single chain: {targets[0].id} gets AlphaFold-Multimer's features of one "
              "chain (a monomer-in-multimer run, as AlphaFold2's multimer preset does)")
    batch = BatchDir(args.out)
    batch.prepare()
    failed, contexts, locks = [], [], []
    try:
        for target in targets:
            folder = batch.target(target.id)
            folder.path.mkdir(parents=True, exist_ok=True)
            lock = StageCache(folder).lock()
            if not lock.acquire(timeout=0):
                failed.append(target.id)
                print(f"{target.id}: failed: another live af2cpu run holds {lock.path}; run again when it is done")
                continue
            locks.append(lock)
            try:
                folder.claim(target.id, target.description, target.sequence, chains_json(target))
            except Af2CpuError as exc:
                failed.append(target.id)
                print(f"{target.id}: failed: {log_failure(folder, 'af2cpu features', exc)}")
                continue
            contexts.append(StageContext(target, cfg, folder, force=args.no_reuse,
                                         precomputed=precomputed_msas(args.precomputed_msas, target.id)))
        results = run_features_in_process(contexts)
    finally:
        for lock in locks:
            lock.release()
    for ctx in contexts:
        outcome = results[ctx.target.id]
        if isinstance(outcome, Exception):
            failed.append(ctx.target.id)
            print(f"{ctx.target.id}: failed: {log_failure(ctx.folder, 'af2cpu features', outcome)}")
            continue
        print(f"{ctx.target.id}: {ctx.folder.features}")
    if failed:
        print(f"{len(failed)} of {len(targets)} target(s) failed: {', '.join(failed)}")
        return 1
    return 0
