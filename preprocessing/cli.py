"""`af2cpu features seq.fasta --out DIR [key=value ...]`: MSAs, template hits and raw features.

For every FASTA record, writes ``DIR/<target id>/msas/`` (uniref90_hits.sto, mgnify_hits.sto,
bfd_uniref_hits.a3m or small_bfd_hits.sto, pdb_hits.hhr, each with a JSON of what produced it) and
``DIR/<target id>/features.npz``. Results already in the output folder, or in the folder given with
``--precomputed-msas``, are reused when they were made for the same sequence and databases. A target
that fails is reported and the others go on; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


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
    parser.add_argument(
        "--no-reuse", action="store_true", help="rerun every search even if a valid result exists"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. db=full db.root=/data/af2")


def _precomputed_for(root: Path | None, target_id: str) -> str | None:
    if root is None:
        return None
    for candidate in (root / target_id / "msas", root / target_id):
        if candidate.is_dir():
            return str(candidate)
    return None


def featurize_target(target, cfg, out_dir: Path, cpus: int, force: bool, precomputed: str | None) -> Path:
    """Run (or reuse) the searches of one target and write its features.npz; returns that path.

    The stages are the ones `af2cpu predict` schedules (``af2cpu.pipeline``), run one after another.
    """
    from af2cpu import pipeline
    from af2cpu.preprocessing import searches

    target_dir = out_dir / target.id
    pipeline.write_target_info(target, str(target_dir))
    for search in searches.plan_searches(cfg.db):
        pipeline.search_stage(target, search.name, cfg, str(target_dir), cpus, force, precomputed)
    pipeline.features_stage(target, cfg, str(target_dir), force)
    return target_dir / "features.npz"


def run(args: argparse.Namespace) -> int:
    from af2cpu.config import compose_config
    from af2cpu.errors import Af2CpuError
    from af2cpu.preprocessing.inputs import read_fasta_targets

    cfg = compose_config(args.overrides)
    targets = read_fasta_targets(args.fasta)
    from af2cpu.predict import prepare_output_folder

    out_dir = Path(args.out)
    prepare_output_folder(out_dir)
    cpus = args.cpus or int(cfg.search.cpus)
    precomputed_root = Path(args.precomputed_msas) if args.precomputed_msas else None
    failed = []
    for target in targets:
        try:
            path = featurize_target(
                target, cfg, out_dir, cpus, args.no_reuse, _precomputed_for(precomputed_root, target.id)
            )
        except Af2CpuError as exc:
            failed.append(target.id)
            print(f"{target.id}: failed: {exc}")
            continue
        print(f"{target.id}: {path}")
    if failed:
        print(f"{len(failed)} of {len(targets)} target(s) failed: {', '.join(failed)}")
        return 1
    return 0
