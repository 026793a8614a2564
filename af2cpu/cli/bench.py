"""`af2cpu bench`: the model's speed against DeepMind's JAX AlphaFold, side by side in one run.

``af2cpu bench [--lengths 64 128]`` times one recycling pass of both models on the same random
official-format weights and features (af2cpu.bench.model); ``--preset model_1_multimer_v3`` (or v2's
``model_1_multimer_v2``, v1's ``model_1_multimer``) does so for AlphaFold-Multimer on a complex of
``--chains`` chains of each length, against DeepMind's multimer model; ``--memory L ...`` measures
peak RSS of one pass per length against the memory planner (af2cpu.bench.memory); ``--contention``
times a small pass idle and beside a busy process for each OpenMP wait policy
(af2cpu.bench.contention); ``--batch FASTA`` times a whole batch, `af2cpu predict` against an
AlphaFold2-style run of DeepMind's code (af2cpu.bench.batch). Results (JSON and markdown) go to
``--out``; docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from af2cpu.bench import PRESET
from af2cpu.bench.contention import VARIANT_NAMES
from af2cpu.errors import ConfigError
from af2cpu.model.presets import PRESETS, get_preset
from af2cpu.runtime.precision import native_bf16, resolve_precision
from af2cpu.runtime.threads import prepare_process, usable_cpu_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=PRESET, choices=sorted(PRESETS), metavar="PRESET",
                        help=f"the model to time (default {PRESET}); a multimer preset (model_1_multimer_v3 ..., "
                        "v2's model_1_multimer_v2 ..., v1's model_1_multimer ...) times a complex of --chains chains "
                        "of each length, as DeepMind's multimer example")
    parser.add_argument("--chains", type=int, default=2,
                        help="chains of the complex for a multimer --preset (default 2: --lengths 128 is 2 x 128)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128],
                        help="sequence lengths to time, per chain for a multimer preset (default: 64 128; "
                        "add 256 for the long run)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=["auto", "fp32", "bf16"],
                        help="af2cpu precisions to time (default: fp32, and bf16 where the CPU has native bf16; "
                             "the reference always runs DeepMind's fp32)")
    parser.add_argument("--msa-rows", type=int, default=64, help="MSA cluster rows (default 64)")
    parser.add_argument("--extra-rows", type=int, default=256, help="extra-MSA rows (default 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both models (default: every CPU of this process's affinity)")
    parser.add_argument("--blocks", type=int, default=48,
                        help="Evoformer blocks of both models (default 48, the real model; fewer for a quick check)")
    parser.add_argument("--passes", type=int, default=1, help="timed recycling passes after the warm-up")
    parser.add_argument("--breakdown-length", type=int, default=None,
                        help="length of the per-module time breakdown (default: the largest length)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the per-module and per-kind-of-work breakdown (two more passes per precision)")
    parser.add_argument("--compile", action="store_true",
                        help="also time af2cpu with torch.compile (compile time reported separately)")
    parser.add_argument("--backends", nargs="+", default=["native"], choices=["native", "ipex"],
                        help="af2cpu's back ends to time, in this order on the same model (runtime.backend; "
                             "ipex needs intel-extension-for-pytorch and its torch, see `make test-ipex`)")
    parser.add_argument("--fp32-products", nargs="+", default=["auto"], choices=["auto", "mkl", "onednn"],
                        help="libraries of af2cpu's fp32 matrix products to time, taking turns on the same model "
                             "(runtime.fp32_products; default auto: oneDNN where measured faster than MKL here)")
    parser.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "pytorch", "af2cpu"],
                        help="attention kernels of af2cpu to time, taking turns on the same model (runtime.attention; "
                             "default auto: af2cpu's own where measured faster than PyTorch's here)")
    parser.add_argument("--elementwise", nargs="+", default=["auto"], choices=["auto", "pytorch", "af2cpu"],
                        help="element-wise kernels (layer norms, gates) of af2cpu to time, taking turns on the same model "
                             "(runtime.elementwise; "
                             "default auto: af2cpu's own where measured faster than PyTorch's here)")
    parser.add_argument("--no-reference", action="store_true", help="time af2cpu only")
    parser.add_argument("--default-msa-sizes", action="store_true",
                        help="give both models AlphaFold2's default input sizes: the MSA (--msa-rows + "
                             "--extra-rows sequences, keep it shallow) padded to 508 clusters, 5120 extra rows "
                             "and 4 templates, as AlphaFold2's pipeline pads every target")
    parser.add_argument("--memory", type=int, nargs="+", metavar="L", default=None,
                        help="instead of timing, measure the peak RSS of one pass at each length L (a fresh "
                             "process each), next to the memory planner's estimate for the chunks it picks "
                             "under --memory-limit")
    parser.add_argument("--templates", type=int, default=0, choices=range(5), metavar="N",
                        help="with --memory (monomer): N of the 4 template slots hold a structure (synthetic "
                             "coordinates), so the template stage runs and is measured (default 0: none)")
    parser.add_argument("--memory-limit", default="6G", help="the memory limit the planner plans for (default 6G)")
    parser.add_argument("--memory-blocks", type=int, default=None,
                        help="block-subset mode for lengths too long to run whole: only this many Evoformer "
                             "blocks (peak memory does not depend on the number of blocks, time does)")
    parser.add_argument("--contention", action="store_true",
                        help="instead, time one small pass (--contention-length, --blocks) idle and beside a busy "
                             "process on one CPU, for each OpenMP wait policy and the reference, interleaved "
                             "(af2cpu.bench.contention); writes contention.json and contention.md")
    parser.add_argument("--contention-length", type=int, default=64, help="length of the --contention pass (64)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --contention (default 2)")
    parser.add_argument("--variants", nargs="+", default=None,
                        choices=VARIANT_NAMES,
                        help="the --contention variants to run (default: all; reference where installed)")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for bench.json and bench.md")
    _add_batch_arguments(parser)


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--batch`` options of ``af2cpu bench`` (``--threads`` and ``--out`` are bench's own)."""
    group = parser.add_argument_group(
        "batch throughput", "with --batch FASTA, time the whole pipeline on a batch instead of the model")
    group.add_argument("--batch", type=Path, default=None, metavar="FASTA",
                       help="fold every record of FASTA with af2cpu (Dask) and with an AlphaFold2-style "
                       "sequential run of DeepMind's code; writes batch.json and batch.md")
    group.add_argument("--batch-models", nargs="+", default=["model_1_ptm"], choices=sorted(PRESETS),
                       metavar="MODEL", help="models to run on both sides (default: model_1_ptm)")
    group.add_argument("--batch-recycles", type=int, default=3, help="recycles (AlphaFold2's default 3)")
    group.add_argument("--batch-relax", choices=["best", "none"], default="best",
                       help="Amber relaxation of the best model, or none (default best)")
    group.add_argument("--batch-precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="af2cpu's precision (default auto: bf16 where native, else fp32); the "
                       "AlphaFold2-style run is fp32")
    group.add_argument("--batch-workers", type=int, default=0,
                       help="af2cpu Dask workers (default 0: af2cpu's own plan from the CPU topology)")
    group.add_argument("--batch-params-seed", type=int, default=0, help="seed of the random parameters")
    group.add_argument("--batch-search-protocols", nargs="*", default=["alphafold2", "mmseqs2"],
                       choices=["alphafold2", "mmseqs2"],
                       help="also time searches and features alone with these search protocols (default both; "
                       "none: give the option without values)")
    group.add_argument("--batch-skip-reference", action="store_true",
                       help="time af2cpu only (as --no-reference does)")


def bench_precisions(requested: list[str] | None, flags=None) -> list[str]:
    """The precisions to time, resolved for this CPU (or one with ``flags``), each once: by default fp32,
    and bf16 where it is native (emulated bf16 is ~450x slower: minutes for one pass), also where
    ``auto`` keeps fp32 because bf16 would gain too little: the bench shows what that choice weighed."""
    if requested is None:
        requested = ["fp32", "bf16"] if native_bf16(flags) else ["fp32"]
    return list(dict.fromkeys(str(resolve_precision(p, flags)) for p in requested))


def run(args: argparse.Namespace) -> int:
    threads = args.threads or usable_cpu_count()
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if get_preset(args.preset).multimer:
        if args.chains < 1:
            raise ConfigError(f"--chains must be at least 1, got {args.chains}")
        if args.default_msa_sizes or args.contention or args.batch is not None:
            raise ConfigError(f"--preset {args.preset}: a multimer preset times one model pass (and --memory); "
                              "--default-msa-sizes, --contention and --batch are for monomer presets")
    args.precisions = bench_precisions(args.precisions)
    args.batch_precision = str(resolve_precision(args.batch_precision))
    if args.batch is not None:
        from af2cpu.bench.batch import run_batch  # deferred: Dask, torch and the reference

        return run_batch(args)
    if args.contention:
        from af2cpu.bench.contention import run_contention  # deferred: each pass runs in a fresh process

        return run_contention(args)
    if args.memory:
        from af2cpu.bench.memory import run_memory  # deferred: each length runs in a fresh process

        return run_memory(args)
    # Before torch and XLA start their thread pools: both read these once, when first imported.
    prepare_process(threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={threads}").strip()
    from af2cpu.bench import model  # deferred: imports torch, which must see the variables above
    from af2cpu.runtime.allocator import tune_allocator

    tune_allocator()
    return model.run(args, threads)
