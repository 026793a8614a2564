"""`af2cpu bench --batch`: af2cpu's batch against an AlphaFold2-style sequential run of DeepMind's code.

Real parts throughout: the mini databases and the real search tools, DeepMind's DataPipeline, the
official-format random params read by both sides, a real `af2cpu predict` on a Dask cluster. The
AlphaFold2-style model itself is only traced here (its padded 5120-row passes take minutes on two
cores); speed is measured by the bench, never asserted by a test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from af2cpu.bench.batch import (
    BatchSettings,
    Stopwatch,
    _fresh_folder,
    _padded_sizes,
    markdown,
    reference_data_pipeline,
    reference_model_config,
    reference_runners,
    throughput_ratio,
    write_random_params,
)
from af2cpu.cli import main
from af2cpu.config import compose_config
from af2cpu.data import EXAMPLES_DIR
from af2cpu.errors import InputError
from af2cpu.preprocessing.inputs import read_fasta_targets, write_query_fasta

UBIQUITIN = EXAMPLES_DIR / "ubiquitin.fasta"
SEARCHES = {"search_uniref90", "search_mgnify", "search_pdb70", "search_bfd_uniref"}
SETTINGS = BatchSettings(models=("model_1_ptm",), num_recycle=0, relax="none", precision="bf16", threads=2)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def params_root(bench_out):
    # Where run_batch looks for seed 0's params, so the af2cpu run below reuses these files.
    return write_random_params(bench_out / "params-seed0", ["model_1_ptm"], seed=0)


@pytest.fixture(scope="module")
def ubiquitin_af2_features(tmp_path_factory):
    """DeepMind's DataPipeline on ubiquitin: (raw features, seconds per timed stage, dropped hits, pipeline)."""
    pytest.importorskip("alphafold.data.pipeline", reason="needs the `reference` extra (jax, haiku, alphafold)")
    folder = tmp_path_factory.mktemp("af2_style")
    watch = Stopwatch()
    pipeline, featurizer = reference_data_pipeline(compose_config(["db=mini"]), 2, watch)
    (target,) = read_fasta_targets(UBIQUITIN)
    (folder / "msas").mkdir()
    raw = pipeline.process(input_fasta_path=str(write_query_fasta(target, folder / "q.fasta")),
                           msa_output_dir=str(folder / "msas"))
    return raw, watch.take(), dict(featurizer.dropped), pipeline


@pytest.fixture(scope="module")
def af2cpu_batch(bench_out, params_root):
    # fp32: bf16 is emulated (slow) on CPUs without native bf16, and the precision is not what is tested.
    # The search protocols' report with MMseqs2 alone (the AlphaFold2 protocol's searches run in predict).
    status = main(["bench", "--batch", str(UBIQUITIN), "--batch-recycles", "0", "--batch-relax", "none",
                   "--batch-precision", "fp32", "--batch-skip-reference", "--threads", "2", "--out", str(bench_out),
                   "--batch-search-protocols", "mmseqs2"])
    return status, json.loads((bench_out / "batch.json").read_text())


@pytest.mark.reference
def test_alphafold2_style_data_pipeline_times_each_tool_and_pads_to_the_eval_sizes(ubiquitin_af2_features):
    raw, stages, dropped, pipeline = ubiquitin_af2_features
    assert set(stages) == SEARCHES | {"templates"} and all(s > 0 for s in stages.values())
    assert pipeline.jackhmmer_uniref90_runner.n_cpu == pipeline.hhblits_bfd_uniref_runner.n_cpu == 2
    names = [n.decode() for n in raw["template_domain_names"]]
    # hhsearch lists 10 hits. AlphaFold 2.3's prefilter drops the query's own structure 1ubi_A (a
    # duplicate), two that cover under 10 % of it and a 9-residue one; the 4cup hit goes because its
    # old mmCIF has no release date AlphaFold2 can read (NOTICE.md). Five chance hits remain.
    assert dropped == {"duplicate": 1, "align_ratio": 2, "length": 1, "no_release_date": 1}
    assert len(names) == 5 and "1ubi_A" not in names

    from alphafold.model import features as af_features

    processed = af_features.np_example_to_features(raw, reference_model_config("model_1_ptm", 0), random_seed=0)
    num_res, rows = 76, raw["msa"].shape[0]
    # AlphaFold2 pads every target to its eval sizes: 512 clusters less 4 template rows, 5120 extra rows.
    assert processed["msa_feat"].shape == (1, 508, num_res, 49)
    assert processed["extra_msa"].shape == (1, 5120, num_res)
    assert processed["template_aatype"].shape == (1, 4, num_res)
    assert processed["msa_row_mask"].sum() == rows < 508 and processed["extra_msa_row_mask"].sum() == 0
    assert processed["template_mask"].sum() == 4


@pytest.mark.reference
def test_reference_runner_reads_the_same_official_params_as_an_unfused_fp32_model(params_root, ubiquitin_af2_features):
    import jax

    runner = reference_runners(params_root, SETTINGS)["model_1_ptm"]
    gc = runner.config.model.global_config
    assert not gc.bfloat16 and gc.subbatch_size == 4 and runner.config.data.eval.max_msa_clusters == 512
    processed = runner.process_features(ubiquitin_af2_features[0], random_seed=0)
    num_res = processed["aatype"].shape[1]
    prev = {"prev_msa_first_row": np.zeros([num_res, 256], np.float16),
            "prev_pair": np.zeros([num_res, num_res, 128], np.float16),
            "prev_pos": np.zeros([num_res, 37, 3], np.float16)}
    # Tracing checks every parameter's name and shape against the model: fused triangle weights or
    # another preset's file would fail here.
    shapes = jax.eval_shape(runner.apply, runner.params, jax.random.PRNGKey(0), {**processed, "prev": prev})
    assert shapes["predicted_lddt"]["logits"].shape == (num_res, 50)
    assert shapes["structure_module"]["final_atom_positions"].shape == (num_res, 37, 3)
    flat = np.load(params_root / "params" / "params_model_1_ptm.npz")
    key = "alphafold/alphafold_iteration/evoformer/preprocess_1d"
    np.testing.assert_array_equal(runner.params[key]["weights"], flat[f"{key}//weights"])


def test_af2cpu_side_folds_the_batch_and_reports_stage_seconds(af2cpu_batch, bench_out, params_root):
    status, results = af2cpu_batch
    assert status == 0
    af2 = results["af2cpu"]
    assert af2["done"] == 1 and results["reference"] is None and results["throughput_ratio"] is None
    assert f"params_dir={params_root / 'params'}" in af2["overrides"]
    stages = af2["targets"]["1UBI_A"]["stages"]
    assert set(stages) == SEARCHES | {"features", "infer_model_1_ptm"}  # relax none: no relax stage
    assert all(s > 0 for s in stages.values())
    assert max(stages.values()) <= af2["targets"]["1UBI_A"]["span_s"] <= af2["wall_s"]
    assert af2["targets_per_hour"] == pytest.approx(3600 / af2["wall_s"], rel=0.01)
    assert (bench_out / "af2cpu" / "1UBI_A" / "ranked_0.pdb").is_file()
    assert "| 1UBI_A | infer_model_1_ptm |" in (bench_out / "batch.md").read_text()


@pytest.mark.reference
def test_the_report_times_searches_and_features_per_search_protocol(af2cpu_batch, bench_out):
    _, results = af2cpu_batch
    entry = results["search_protocols"]["mmseqs2"]
    target = entry["targets"]["1UBI_A"]
    assert set(target["stages"]) == {"search_mmseqs2", "search_mmseqs2_pdb70", "features"}
    assert target["msa_rows"] == {"colabfold": 2} and target["templates"] >= 1  # 1ubi_A in PDB70
    assert 0 < max(target["stages"].values()) <= entry["wall_s"]
    assert "| mmseqs2 |" in (bench_out / "batch.md").read_text()


@pytest.mark.reference
def test_report_sets_both_sides_stage_by_stage_and_gives_the_throughput_ratio(af2cpu_batch, ubiquitin_af2_features):
    _, results = af2cpu_batch
    measured = ubiquitin_af2_features[1]
    stages = {**{k: round(v, 2) for k, v in measured.items()}, "infer_model_1_ptm": 150.0}
    wall = sum(stages.values()) + 20.0
    results["reference"] = {"wall_s": wall, "setup_s": 20.0, "done": 1, "targets_per_hour": round(3600 / wall, 2),
                            "load_average_before": 1.0, "load_average_after": 1.0,
                            "models": {"model_1_ptm": _padded_sizes(reference_model_config("model_1_ptm", 0))},
                            "targets": {"1UBI_A": {"status": "done", "stages": stages,
                                                   "passes": {"model_1_ptm": {"count": 1, "first_s": 150.0,
                                                                              "later_mean_s": None}}}}}
    ratio = throughput_ratio(results)
    assert ratio == pytest.approx(results["af2cpu"]["targets_per_hour"] / results["reference"]["targets_per_hour"],
                                  rel=0.01)
    results["throughput_ratio"] = ratio
    text = markdown(results)
    assert f"**{ratio}x**" in text
    af2_stages = results["af2cpu"]["targets"]["1UBI_A"]["stages"]
    assert f"| 1UBI_A | search_uniref90 | {af2_stages['search_uniref90']} | {stages['search_uniref90']} |" in text
    assert f"| 1UBI_A | templates | — | {stages['templates']} |" in text  # af2cpu makes templates in features
    rows = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| 1UBI_A |")]
    assert rows.index("search_uniref90") < rows.index("search_pdb70") < rows.index("infer_model_1_ptm")
    assert "- 1UBI_A model_1_ptm: 1 pass(es), first 150.0 s" in text
    assert "- model_1_ptm: 508 MSA clusters, 5120 extra-MSA rows, 4 template slots; subbatch size 4" in text


def test_bad_thread_counts_and_foreign_folders_are_refused(tmp_path, capsys):
    assert main(["bench", "--batch", str(UBIQUITIN), "--threads", "100000", "--out", str(tmp_path)]) == 2
    assert "--threads must be between 1 and" in capsys.readouterr().err
    (tmp_path / "someone_else").mkdir()
    (tmp_path / "someone_else" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="was not written by af2cpu bench --batch"):
        _fresh_folder(tmp_path / "someone_else", ".af2cpu-bench-reference")
    assert (tmp_path / "someone_else" / "notes.txt").read_text() == "keep me"
