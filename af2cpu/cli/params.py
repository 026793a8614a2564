"""Parameter commands: ``af2cpu params random`` and ``af2cpu params download``.

``af2cpu params random --preset model_1_ptm --seed 0 OUT.npz`` writes random parameters in the exact
official format (names, shapes, fan-in scaled), a stand-in for the real files wherever they cannot
be downloaded. ``af2cpu params download [--url URL] [--dest DIR]`` fetches DeepMind's published
tarball, resuming a partial download, verifies it and unpacks it.
"""

from __future__ import annotations

import argparse

from af2cpu.model.params import PARAMS_URL, download_params, random_params, write_npz, write_safetensors
from af2cpu.model.presets import PRESETS

DEFAULT_DEST = "params"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``random`` and ``download`` subcommands to the ``params`` parser."""
    sub = parser.add_subparsers(dest="params_command", metavar="SUBCOMMAND", required=True)
    rand = sub.add_parser("random", help="write random parameters in the official .npz format")
    rand.add_argument("--preset", default="model_1_ptm", choices=sorted(PRESETS), help="model preset")
    rand.add_argument("--seed", type=int, default=0, help="random seed")
    rand.add_argument("out", help="output .npz (or .safetensors) path")
    down = sub.add_parser("download", help="download and unpack DeepMind's parameter tarball (resumable)")
    down.add_argument("--url", default=PARAMS_URL, help="tarball URL (default: %(default)s)")
    down.add_argument("--dest", default=DEFAULT_DEST, help="destination directory (default: %(default)s)")
    down.add_argument("--sha256", default=None, help="expected sha256 of the tarball")
    down.add_argument("--size", type=int, default=None, help="expected size of the tarball in bytes")
    down.add_argument("--no-unpack", action="store_true", help="keep the tarball packed")


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``params`` subcommand."""
    if args.params_command == "random":
        return _random(args)
    return _download(args)


def _random(args) -> int:
    import torch  # deferred: torch, only for this subcommand

    from af2cpu.model.alphafold import AlphaFold  # deferred: imports torch

    with torch.device("meta"):
        model = AlphaFold(args.preset)
    flat = random_params(model, seed=args.seed)
    (write_safetensors if str(args.out).endswith(".safetensors") else write_npz)(args.out, flat)
    print(f"wrote {len(flat)} tensors ({sum(v.size for v in flat.values()):,} parameters) of preset "
          f"{args.preset} to {args.out}")
    return 0


def _download(args) -> int:
    path = download_params(args.dest, args.url, expected_size=args.size, sha256=args.sha256,
                           unpack=not args.no_unpack)
    print(f"downloaded {path}" + ("" if args.no_unpack else f" and unpacked it into {args.dest}"))
    return 0
