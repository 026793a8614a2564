"""`af2cpu bench --batch FASTA`: end-to-end throughput of a batch, af2cpu against an AlphaFold2-style run.

Both sides fold every record of FASTA on the bundled mini databases (official layout), with the same
weights (random ones in the exact official ``.npz`` format, written once under ``--out`` and read by
both), the same models, recycles and relaxation, on the same CPUs (``--threads``):

- af2cpu: :func:`af2cpu.predict` on its default local Dask cluster (pinned workers, the
  searches of several targets in parallel, no padding, ``--batch-precision``) into a fresh folder.
  Per-stage seconds come from each target's ``timings.json``; stages overlap, as they run in parallel.
- AlphaFold2-style: DeepMind's code (the ``reference`` extra) driven the way AlphaFold2's
  ``run_alphafold.py`` drives it, targets one after another and stages one after another:
  ``alphafold.data.pipeline.DataPipeline`` with the real jackhmmer, hhblits, hhsearch and kalign
  (``n_cpu`` = threads), ``alphafold.model.model.RunModel`` per model at the config's eval settings
  (processed features padded to 508 MSA clusters, 5120 extra-MSA rows and 4 template slots), fp32
  as DeepMind's monomer runs, and ``alphafold.relax.relax.AmberRelaxation`` with AlphaFold2's
  settings on the best model. Model time includes XLA's compilation for every new length, as in
  AlphaFold2; loading the parameters and building the runners is timed once, as ``setup``.

Results: ``batch.json`` and ``batch.md`` in ``--out``: seconds per target and stage on both sides,
wall time, targets per hour, and the throughput ratio (af2cpu targets per hour over AlphaFold2-style).

``--batch-search-protocols`` (default: both) also times the searches and features alone with each search
protocol (``search=alphafold2``, ``search=mmseqs2``) on the mini databases, as `af2cpu features` runs them
(in one process, targets one after another; MMseqs2 first searches the whole batch in one run): wall
time, the MMseqs2 batch run, each target's stage seconds, MSA rows and templates.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from af2cpu.bench.machine import machine_info
from af2cpu.bench.reference import available as reference_available
from af2cpu.bench.reference import reference_config
from af2cpu.config import compose_config
from af2cpu.errors import ConfigError, InputError
from af2cpu.formats import load_timings
from af2cpu.io import atomic_write_text
from af2cpu.layout import BatchDir, TargetDir
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.params import random_params, write_npz
from af2cpu.model.weights import params_file
from af2cpu.preprocessing.binaries import find_binary
from af2cpu.preprocessing.inputs import read_fasta_batch, write_query_fasta
from af2cpu.preprocessing.templates import TemplateSettings
from af2cpu.runtime.placement import plan_instances
from af2cpu.runtime.topology import read_topology
from af2cpu.scheduler.batch import run_batch as run_af2cpu_batch
from af2cpu.scheduler.stages import StageContext, run_features_in_process

MODEL_NAMES = [f"model_{i}{suffix}" for suffix in ("_ptm", "") for i in range(1, 6)]
# AlphaFold2's run_alphafold.py relaxation settings.
AF2_RELAX = {"max_iterations": 0, "tolerance": 2.39, "stiffness": 10.0, "exclude_residues": [],
             "max_outer_iterations": 3}
# AlphaFold 2.3's template hit prefilter (templates._assess_hhsearch_hit, default arguments): af2cpu's own.
PREFILTER = TemplateSettings(mmcif_dir="", max_template_date="")
REFERENCE_MARKER = ".af2cpu-bench-reference"  # marks the AlphaFold2-style output folder as ours


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """What both sides run: models, recycles, relaxation; af2cpu's precision and Dask workers."""

    models: tuple[str, ...]
    num_recycle: int
    relax: str
    precision: str
    threads: int
    workers: int = 0
    params_seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, threads: int) -> BatchSettings:
        if args.batch_recycles < 0:
            raise ConfigError(f"--batch-recycles must be 0 or more, got {args.batch_recycles}")
        if args.batch_workers < 0:
            raise ConfigError(f"--batch-workers must be 0 or more, got {args.batch_workers}")
        return cls(models=tuple(dict.fromkeys(args.batch_models)), num_recycle=args.batch_recycles,
                   relax=args.batch_relax, precision=args.batch_precision, threads=threads,
                   workers=args.batch_workers, params_seed=args.batch_params_seed)


def run_batch(args: argparse.Namespace) -> int:
    """Run the batch on both sides, write ``batch.json`` and ``batch.md``; 0 when every target finished."""
    available = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(available)
    if not 1 <= threads <= len(available):
        raise ConfigError(f"--threads must be between 1 and the {len(available)} CPUs this process may use, "
                          f"got {threads}")
    settings = BatchSettings.from_args(args, threads)
    targets, invalid = read_fasta_batch(args.batch)
    if invalid or not targets:
        problems = "; ".join(str(e) for e in invalid) or "no records"
        raise InputError(f"--batch {args.batch}: {problems}; give a FASTA file of valid protein records")
    skip_reference = args.batch_skip_reference or getattr(args, "no_reference", False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _same_cpus_for_both(available[:threads]):
        params_root = write_random_params(out / f"params-seed{settings.params_seed}", settings.models,
                                          settings.params_seed)
        results = {"batch": str(args.batch), "machine": machine_info(threads), "settings": dataclasses.asdict(settings),
                   "targets": [{"id": t.id, "length": len(t.sequence)} for t in targets],
                   "params": f"random, official .npz format, seed {settings.params_seed}: {params_root / 'params'}"}
        print(f"af2cpu: {len(targets)} target(s), {threads} thread(s)")
        results["af2cpu"] = run_af2cpu(args.batch, out / "af2cpu", params_root / "params", settings)
        if skip_reference or not reference_available():
            results["reference"] = None
        else:
            print("AlphaFold2-style: the same targets one after another")
            results["reference"] = run_reference(targets, out / "reference", params_root, settings)
        protocols = getattr(args, "batch_search_protocols", None) or []
        results["search_protocols"] = time_search_protocols(args.batch, out, protocols, threads) if protocols else None
    results["throughput_ratio"] = throughput_ratio(results)
    atomic_write_text(out / "batch.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    atomic_write_text(out / "batch.md", text)
    print(text)
    sides = [results["af2cpu"]] + ([results["reference"]] if results["reference"] else [])
    return 0 if all(side["done"] == len(targets) for side in sides) else 1


@contextlib.contextmanager
def _same_cpus_for_both(cpus: list[int]):
    """Run the block on `cpus` with thread counts to match; the affinity and environment are restored.

    Threads and child processes started inside (Dask workers, search tools, OpenMM, XLA's pool)
    inherit the affinity, and af2cpu plans its workers from it; the variables reach JAX/XLA and
    OpenMM in this process (Dask workers set their own).
    """
    saved_cpus = os.sched_getaffinity(0)
    threads = str(len(cpus))
    xla = os.environ.get("XLA_FLAGS", "")
    wanted = {"OMP_NUM_THREADS": threads, "OPENMM_CPU_THREADS": threads,
              "XLA_FLAGS": f"{xla} --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}".strip()}
    saved_env = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved_cpus)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def write_random_params(root: Path, models, seed: int) -> Path:
    """``root/params/params_<model>.npz``: random weights in the official format, written once.

    The layout is AlphaFold2's ``--data_dir`` (``alphafold.model.data.get_model_haiku_params`` reads
    ``<root>/params/``). Each model's seed is ``seed`` plus its place in :data:`MODEL_NAMES`, so a
    file made for another selection of models is the same file.
    """
    folder = root / "params"
    folder.mkdir(parents=True, exist_ok=True)
    for name in models:
        path = params_file(folder, name)
        if path.is_file():
            continue
        with torch.device("meta"):
            model = AlphaFold(name)
        write_npz(path, random_params(model, seed=seed + MODEL_NAMES.index(name)))
    return root


def _fresh_folder(path: Path, marker: str) -> None:
    """Create `path` empty; an earlier run's folder (it holds `marker`) is removed first."""
    if path.exists():
        if not (path / marker).is_file():
            raise InputError(f"{path} exists and was not written by af2cpu bench --batch; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / marker).touch()


# ---------------------------------------------------------------------------------------------
# af2cpu


def af2cpu_overrides(params_dir: Path, settings: BatchSettings) -> list[str]:
    """The `af2cpu predict` overrides for the batch settings."""
    return ["db=mini", "params=official", f"params_dir={params_dir}", f"model.names=[{','.join(settings.models)}]",
            f"model.num_recycle={settings.num_recycle}", f"relax={settings.relax}",
            f"runtime.precision={settings.precision}", f"scheduler.n_workers={settings.workers}"]


def time_search_protocols(fasta: Path, out_dir: Path, protocols, threads: int) -> dict:
    """Searches and features of the batch with each search protocol, each in a fresh folder, as `af2cpu
    features` runs them: wall time, the batch search's own run, and per target its stage seconds, MSA
    rows (before de-duplication, per MSA) and templates."""
    targets, _ = read_fasta_batch(fasta)
    results = {}
    for protocol in protocols:
        folder = out_dir / f"features-{protocol}"
        _fresh_folder(folder, BatchDir.MARKER)
        batch = BatchDir(folder)
        batch.prepare()
        cfg = compose_config(["db=mini", f"search={protocol}", f"search.cpus={threads}"])
        contexts = []
        for target in targets:
            target_dir = batch.target(target.id)
            target_dir.claim(target.id, target.description, target.sequence)
            contexts.append(StageContext(target, cfg, target_dir))
        print(f"searches and features, search={protocol}")
        start = time.perf_counter()
        done = run_features_in_process(contexts)
        wall = time.perf_counter() - start
        entry = {"wall_s": round(wall, 2), "batch_search_s": None, "targets": {}}
        for ctx in contexts:
            timings = done[ctx.target.id]
            if isinstance(timings, Exception):
                entry["targets"][ctx.target.id] = {"failure": str(timings)}
                continue
            report = json.loads(ctx.folder.features_report.read_text())
            entry["targets"][ctx.target.id] = {
                "stages": {name: round(t.end - t.start, 2) for name, t in timings.items()},
                "msa_rows": report["msa_sizes"], "templates": len(report["templates"])}
            for sidecar in ctx.folder.msas.glob("*.json"):
                recorded = json.loads(sidecar.read_text())
                if recorded.get("batch_size", 1) > 1:
                    entry["batch_search_s"] = recorded["seconds"]
        results[protocol] = entry
    return results


def run_af2cpu(fasta: Path, out_dir: Path, params_dir: Path, settings: BatchSettings) -> dict:
    """`af2cpu.predict` on the whole batch in a fresh folder: wall time and each target's stage seconds."""
    _fresh_folder(out_dir, BatchDir.MARKER)
    plan = plan_instances(read_topology(), instances=settings.workers or None)
    overrides = af2cpu_overrides(params_dir, settings)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_af2cpu_batch(fasta, out_dir, overrides, force=True, quiet=True)
    wall = time.perf_counter() - start
    targets = {}
    for outcome in result.outcomes:
        entry = {"status": outcome.status, "stages": {}}
        timings = BatchDir(out_dir).target(outcome.target.id).timings
        if timings.is_file():
            spans = load_timings(timings)
            entry["stages"] = {name: round(end - begin, 2) for name, (begin, end) in spans.items()}
            entry["span_s"] = round(max(e for _, e in spans.values()) - min(b for b, _ in spans.values()), 2)
        if outcome.status == "done":
            entry["mean_plddt"] = round(float(outcome.summary["mean_plddt"]), 2)
        else:
            entry["failure"] = outcome.failure
        targets[outcome.target.id] = entry
    done = sum(t["status"] == "done" for t in targets.values())
    return {"wall_s": round(wall, 2), "done": done, "targets_per_hour": round(3600 * done / wall, 2),
            "workers": [a.describe() for a in plan.allotments], "overrides": overrides,
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2),
            "targets": targets}


# ---------------------------------------------------------------------------------------------
# AlphaFold2-style: DeepMind's code, one target and one stage at a time


class Stopwatch:
    """Seconds per stage name, summed over the calls since the last `take`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {}
        return taken


class _Timed:
    """One of the reference's tool objects with its `method` timed as `stage`; the rest passes through."""

    def __init__(self, tool, method: str, stage: str, watch: Stopwatch):
        self._tool, self._method, self._stage, self._watch = tool, method, stage, watch

    def __getattr__(self, name: str):
        attr = getattr(self._tool, name)
        if name != self._method:
            return attr

        def timed(*args, **kwargs):
            with self._watch(self._stage):
                return attr(*args, **kwargs)

        return timed


class PrefilteredFeaturizer:
    """The reference's hhsearch template featurizer behind AlphaFold 2.3's hit prefilter.

    The reference package (ColabFold's 2.3.20) no longer rejects hits that cover at most 10 % of the
    query, are shorter than 10 residues, or duplicate the query (a subsequence over 95 % of its
    length); AlphaFold 2.3 rejects them before reading any mmCIF. Hits on an mmCIF without
    ``_pdbx_audit_revision_history`` are dropped too: AlphaFold2 reads the release date only from
    there and raises KeyError otherwise (two such old files are in the mini databases, NOTICE.md).
    """

    def __init__(self, featurizer, mmcif_dir: str, obsolete_pdbs_path: str):
        from alphafold.data import templates  # deferred: an optional dependency (the reference extra)

        self._featurizer = featurizer
        self._mmcif_dir = Path(mmcif_dir)
        self._obsolete = templates._parse_obsolete(obsolete_pdbs_path)
        self.dropped: dict[str, int] = {}

    def _reason(self, hit, query: str) -> str | None:
        from alphafold.data import templates  # deferred: an optional dependency (the reference extra)

        template = hit.hit_sequence.replace("-", "")
        if hit.aligned_cols / len(query) <= PREFILTER.min_align_ratio:
            return "align_ratio"
        if template in query and len(template) / len(query) > PREFILTER.max_subsequence_ratio:
            return "duplicate"
        if len(template) < PREFILTER.min_template_length:
            return "length"
        code, _ = templates._get_pdb_id_and_chain(hit)
        cif = self._mmcif_dir / f"{self._obsolete.get(code) or code}.cif"
        if cif.is_file() and "_pdbx_audit_revision_history.revision_date" not in cif.read_text():
            return "no_release_date"
        return None

    def get_templates(self, query_sequence: str, hits):
        kept = []
        for hit in hits:
            reason = self._reason(hit, query_sequence)
            if reason is None:
                kept.append(hit)
            else:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return self._featurizer.get_templates(query_sequence=query_sequence, hits=kept)


def reference_data_pipeline(cfg, threads: int, watch: Stopwatch):
    """AlphaFold2's monomer DataPipeline on the configured databases, each search and the template
    featurization timed into `watch` (``search_<name>``, ``templates``); returns (pipeline, featurizer)."""
    from alphafold.data import pipeline, templates  # deferred: an optional dependency (the reference extra)
    from alphafold.data.tools import hhsearch

    db = cfg.db
    featurizer = PrefilteredFeaturizer(
        templates.HhsearchHitFeaturizer(
            mmcif_dir=str(db.template_mmcif_dir), max_template_date=str(cfg.max_template_date), max_hits=20,
            kalign_binary_path=str(find_binary("kalign")), release_dates_path=None,
            obsolete_pdbs_path=str(db.obsolete_pdbs)),
        str(db.template_mmcif_dir), str(db.obsolete_pdbs))
    data = pipeline.DataPipeline(
        jackhmmer_binary_path=str(find_binary("jackhmmer")), hhblits_binary_path=str(find_binary("hhblits")),
        uniref90_database_path=str(db.uniref90), mgnify_database_path=str(db.mgnify),
        bfd_database_path=str(db.bfd), uniref30_database_path=str(db.uniref30), small_bfd_database_path=None,
        template_searcher=hhsearch.HHSearch(binary_path=str(find_binary("hhsearch")), databases=[str(db.pdb70)]),
        template_featurizer=featurizer, use_small_bfd=False)
    for runner in (data.jackhmmer_uniref90_runner, data.jackhmmer_mgnify_runner, data.hhblits_bfd_uniref_runner):
        runner.n_cpu = threads
    data.jackhmmer_uniref90_runner = _Timed(data.jackhmmer_uniref90_runner, "query", "search_uniref90", watch)
    data.jackhmmer_mgnify_runner = _Timed(data.jackhmmer_mgnify_runner, "query", "search_mgnify", watch)
    data.hhblits_bfd_uniref_runner = _Timed(data.hhblits_bfd_uniref_runner, "query", "search_bfd_uniref", watch)
    data.template_searcher = _Timed(data.template_searcher, "query", "search_pdb70", watch)
    data.template_featurizer = _Timed(featurizer, "get_templates", "templates", watch)
    return data, featurizer


def reference_model_config(name: str, num_recycle: int):
    """AlphaFold2's model config for `name` at its eval settings, as DeepMind's monomer runs it: fp32,
    unfused weights, the eval sizes (512 MSA clusters, 5120 extra rows, 4 templates, padded to) and
    DeepMind's ``subbatch_size`` 4 (see af2cpu.bench.reference)."""
    return reference_config(name, num_recycle, subbatch_size=4)


def reference_runners(params_root: Path, settings: BatchSettings) -> dict:
    """One ``RunModel`` per model with the official-format params under ``params_root/params``."""
    from alphafold.model import data, model  # deferred: an optional dependency (the reference extra)

    return {name: model.RunModel(reference_model_config(name, settings.num_recycle),
                                 data.get_model_haiku_params(name, str(params_root), fuse=False))
            for name in settings.models}


def _padded_sizes(cfg) -> dict:
    """What a RunModel config pads every target to, and how it runs."""
    return {"bfloat16": bool(cfg.model.global_config.bfloat16), "subbatch_size": cfg.model.global_config.subbatch_size,
            "max_msa_clusters": int(cfg.data.eval.max_msa_clusters),
            "reduce_msa_clusters_by_max_templates": bool(cfg.data.common.reduce_msa_clusters_by_max_templates),
            "max_extra_msa": int(cfg.data.common.max_extra_msa), "max_templates": int(cfg.data.eval.max_templates),
            "use_templates": bool(cfg.data.common.use_templates)}


def _float32_result(result: dict) -> dict:
    """RunModel returns float16 outputs; the structure is written (and relaxed) from float32 copies."""
    return {**result, "plddt": np.asarray(result["plddt"], np.float32),
            "structure_module": {k: np.asarray(v, np.float32) for k, v in result["structure_module"].items()}}


def reference_target(target, target_dir: Path, data_pipeline, runners: dict, watch: Stopwatch,
                     relaxer=None) -> dict:
    """One target through the AlphaFold2-style stages; seconds per stage and per recycling pass."""
    from alphafold.common import protein, residue_constants  # deferred: an optional dependency

    msa_dir = target_dir / "msas"
    msa_dir.mkdir(parents=True)
    fasta = write_query_fasta(target, target_dir / f"{target.id}.fasta")
    watch.take()
    start = time.perf_counter()
    raw = data_pipeline.process(input_fasta_path=str(fasta), msa_output_dir=str(msa_dir))
    stages = watch.take()
    # The rest of DataPipeline.process: parsing the MSAs and hits, sequence and MSA features.
    stages["features"] = time.perf_counter() - start - sum(stages.values())
    entry: dict = {"msa_rows": int(raw["msa"].shape[0]), "templates": int(raw["template_aatype"].shape[0]),
                   "passes": {}, "mean_plddt": {}}
    structures = {}
    for index, (name, runner) in enumerate(runners.items()):
        seed = index  # AlphaFold2's per-model seed, model index + random_seed x models, random_seed 0
        with watch(f"process_features_{name}"):
            processed = runner.process_features(raw, random_seed=seed)
        ends = [time.perf_counter()]
        with watch(f"infer_{name}"):
            result, _ = runner.predict(processed, random_seed=seed,
                                       callback=lambda *_, ends=ends: ends.append(time.perf_counter()))
        passes = np.diff(ends)
        entry["passes"][name] = {"first_s": round(float(passes[0]), 2),
                                 "later_mean_s": round(float(passes[1:].mean()), 2) if len(passes) > 1 else None,
                                 "count": len(passes)}
        with watch("outputs"):
            result = _float32_result(result)
            plddt = result["plddt"]
            b_factors = np.repeat(plddt[:, None], residue_constants.atom_type_num, axis=-1)
            structures[name] = protein.from_prediction(processed, result, b_factors)
            atomic_write_text(TargetDir(target_dir).unrelaxed(name), protein.to_pdb(structures[name]))
        entry["mean_plddt"][name] = round(float(plddt.mean()), 2)
    best = max(entry["mean_plddt"], key=entry["mean_plddt"].get)  # AlphaFold2 ranks monomers by pLDDT
    entry["best_model"] = best
    if relaxer is not None:
        with watch(f"relax_{best}"):
            relaxed, _, violations = relaxer.process(prot=structures[best])
        atomic_write_text(TargetDir(target_dir).relaxed(best), relaxed)
        entry["violations_after_relax"] = int(np.sum(violations))
    stages.update(watch.take())
    entry["stages"] = {name: round(seconds, 2) for name, seconds in stages.items()}
    return entry


def run_reference(targets, out_dir: Path, params_root: Path, settings: BatchSettings) -> dict:
    """The AlphaFold2-style sequential run of DeepMind's code on `targets`: wall time and stage seconds."""
    _fresh_folder(out_dir, REFERENCE_MARKER)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    watch = Stopwatch()
    with watch("setup"):
        data_pipeline, featurizer = reference_data_pipeline(compose_config(["db=mini"]), settings.threads, watch)
        runners = reference_runners(params_root, settings)
        relaxer = None
        if settings.relax == "best":
            from alphafold.relax import relax  # deferred: an optional dependency (the reference extra)

            relaxer = relax.AmberRelaxation(**AF2_RELAX, use_gpu=False)
    setup = watch.take()["setup"]
    entries = {}
    for target in targets:
        print(f"  {target.id} (L={len(target.sequence)})")
        featurizer.dropped = {}
        try:
            entry = reference_target(target, out_dir / target.id, data_pipeline, runners, watch, relaxer)
            entry["status"] = "done"
        except Exception as exc:  # noqa: BLE001 - as a batch, one target's failure must not stop the others
            entry = {"status": "failed", "failure": f"{type(exc).__name__}: {exc}",
                     "stages": {k: round(v, 2) for k, v in watch.take().items()}}
        entry["templates_dropped"] = dict(featurizer.dropped)
        entries[target.id] = entry
    wall = time.perf_counter() - start
    done = sum(e["status"] == "done" for e in entries.values())
    return {"wall_s": round(wall, 2), "setup_s": round(setup, 2), "done": done,
            "targets_per_hour": round(3600 * done / wall, 2),
            "n_cpu": settings.threads, "models": {name: _padded_sizes(r.config) for name, r in runners.items()},
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2),
            "targets": entries}


# ---------------------------------------------------------------------------------------------
# Report


def throughput_ratio(results: dict) -> float | None:
    """af2cpu's targets per hour over the AlphaFold2-style run's (None without both)."""
    reference = results.get("reference")
    if not reference or not reference["targets_per_hour"] or not results["af2cpu"]["targets_per_hour"]:
        return None
    return round(results["af2cpu"]["targets_per_hour"] / reference["targets_per_hour"], 2)


_STAGE_ORDER = ("search_uniref90", "search_mgnify", "search_pdb70", "search_bfd_uniref", "templates",
                "features", "process_features", "infer", "outputs", "relax")


def _stage_rank(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_STAGE_ORDER):
        if name == prefix or name.startswith(prefix + "_"):
            return rank, name
    return len(_STAGE_ORDER), name


def markdown(results: dict) -> str:
    """The batch results as markdown: totals, throughput ratio, seconds per target and stage."""
    s, m = results["settings"], results["machine"]
    af2, ref = results["af2cpu"], results.get("reference")
    lengths = ", ".join(f"{t['id']} ({t['length']})" for t in results["targets"])
    lines = [(f"Batch {results['batch']}: {len(results['targets'])} target(s): {lengths}. Models "
              f"{', '.join(s['models'])}, {s['num_recycle']} recycles, relax {s['relax']}; {m['threads']} "
              f"thread(s) on {m['cpu']} (load average {m['load_average'][0]} at the start); mini databases; "
              f"{results['params']} on both sides."), "",
             (f"| | af2cpu ({s['precision']}, Dask: {'; '.join(af2['workers'])}) | AlphaFold2-style "
              "(DeepMind's code, fp32, sequential) |"), "| --- | --- | --- |"]

    def cell(key, side):
        return "—" if side is None else str(side[key])

    lines.append(f"| wall time (s) | {af2['wall_s']} | {cell('wall_s', ref)} |")
    lines.append(f"| of which setup (s) | — | {cell('setup_s', ref)} |")
    lines.append(f"| targets done | {af2['done']} | {cell('done', ref)} |")
    lines.append(f"| targets per hour | {af2['targets_per_hour']} | {cell('targets_per_hour', ref)} |")
    lines.append(f"| load average before / after | {af2['load_average_before']} / {af2['load_average_after']} | "
                 + ("—" if ref is None else f"{ref['load_average_before']} / {ref['load_average_after']}") + " |")
    ratio = results.get("throughput_ratio")
    lines += ["", "Throughput ratio (af2cpu / AlphaFold2-style targets per hour): "
              + ("— (no AlphaFold2-style run)" if ratio is None else f"**{ratio}x**"), "",
              ("Seconds per target and stage (af2cpu's stages of a target overlap: searches run in parallel, "
               "and targets share the workers; AlphaFold2-style stages run one after another; af2cpu's "
               "infer includes feature processing, AlphaFold2-style infer includes XLA compilation):"), "",
              "| target | stage | af2cpu (s) | AlphaFold2-style (s) |", "| --- | --- | --- | --- |"]
    for target in results["targets"]:
        ours = af2["targets"].get(target["id"], {})
        theirs = (ref or {}).get("targets", {}).get(target["id"], {})
        names = sorted(set(ours.get("stages", {})) | set(theirs.get("stages", {})), key=_stage_rank)
        for name in names:
            lines.append(f"| {target['id']} | {name} | {ours.get('stages', {}).get(name, '—')} "
                         f"| {theirs.get('stages', {}).get(name, '—')} |")
        total = round(sum(theirs["stages"].values()), 2) if theirs.get("stages") else "—"
        lines.append(f"| {target['id']} | **first start to last end** | {ours.get('span_s', '—')} | {total} |")
        for side, entry in (("af2cpu", ours), ("AlphaFold2-style", theirs)):
            if entry.get("status") == "failed":
                lines.append(f"| {target['id']} | FAILED ({side}) | {entry.get('failure', '')} | |")
    protocols = results.get("search_protocols") or {}
    if protocols:
        lines += ["", ("Searches and features alone, per search protocol (mini databases, in one process, targets "
                       "one after another as `af2cpu features` runs them; search=mmseqs2 first searches the whole "
                       "batch in one MMseqs2 run):"), "",
                  "| protocol | wall (s) | batch search run (s) | target | stages (s) | MSA rows | templates |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for protocol, entry in protocols.items():
            for target_id, t in entry["targets"].items():
                stages = ", ".join(f"{k} {v}" for k, v in t.get("stages", {}).items()) or t.get("failure", "")
                rows = ", ".join(f"{k} {v}" for k, v in t.get("msa_rows", {}).items())
                lines.append(f"| {protocol} | {entry['wall_s']} | {entry['batch_search_s'] or '—'} | {target_id} "
                             f"| {stages} | {rows} | {t.get('templates', '—')} |")
    if ref is not None:
        lines += ["", "AlphaFold2-style processed features, padded to (whatever the target's MSA depth):", ""]
        for name, p in ref["models"].items():
            clusters = p["max_msa_clusters"] - (
                p["max_templates"] if p["reduce_msa_clusters_by_max_templates"] and p["use_templates"] else 0)
            lines.append(f"- {name}: {clusters} MSA clusters, {p['max_extra_msa']} extra-MSA rows, "
                         f"{p['max_templates']} template slots; subbatch size {p['subbatch_size']}")
        lines += ["", "AlphaFold2-style recycling passes (first one includes XLA's compilation for the length):", ""]
        for target_id, entry in ref["targets"].items():
            for name, p in entry.get("passes", {}).items():
                later = "" if p["later_mean_s"] is None else f", later passes {p['later_mean_s']} s each"
                lines.append(f"- {target_id} {name}: {p['count']} pass(es), first {p['first_s']} s{later}")
    return "\n".join(lines) + "\n"
