"""`af2cpu bench` times both models on the same inputs and writes its JSON and markdown table.

A one-block model at L=16 keeps this fast; the timings themselves are not asserted (speed is
measured by the bench, never by a test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from af2cpu.bench.model import make_inputs
from af2cpu.cli import main

pytestmark = pytest.mark.reference


def test_bench_writes_timings_speedups_and_module_breakdown(tmp_path):
    pytest.importorskip("alphafold", reason="needs the `reference` extra (jax, haiku, alphafold)")
    # Both precisions asked for explicitly: by default bf16 is timed only where it is native.
    status = main(["bench", "--lengths", "16", "--msa-rows", "4", "--extra-rows", "8", "--blocks", "1",
                   "--threads", "1", "--precisions", "fp32", "bf16", "--out", str(tmp_path)])
    assert status == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    runs = {(r["model"], r["precision"]): r for r in results["runs"]}
    assert set(runs) == {("af2cpu", "fp32"), ("af2cpu", "bf16"), ("reference", "fp32")}
    # The bf16 GEMM peak is measured only where the CPU multiplies bf16 natively (emulated elsewhere).
    native_bf16 = results["machine"]["native_bf16"]
    assert results["gemm_peak_gflops"]["fp32"] > 0
    if native_bf16:
        assert results["gemm_peak_gflops"]["bf16"] > 0
    else:
        assert results["gemm_peak_gflops"]["bf16"] is None
    for (_, precision), run in runs.items():
        assert run["pass_s"] > 0 and run["gflop"] > 0
        if precision == "fp32" or native_bf16:
            assert 0 < run["peak_fraction"]
        else:
            assert run["peak_fraction"] is None
    # The speed-up is rounded to two decimals, whichever model is faster.
    assert runs["af2cpu", "fp32"]["speedup_vs_reference"] == pytest.approx(
        runs["reference", "fp32"]["pass_s"] / runs["af2cpu", "fp32"]["pass_s"], abs=0.006)
    breakdown = results["breakdown"]["bf16"]
    assert breakdown["evoformer/triangle_multiplication_outgoing"] > 0 and breakdown["structure_module"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| 16 | reference | fp32 | XLA |" in table and "evoformer/outer_product_mean" in table


def test_bench_inputs_are_official_format_with_masked_template_slots():
    model, flat, features = make_inputs(40, msa_rows=4, extra_rows=6, blocks=1)
    assert "alphafold/alphafold_iteration/evoformer/preprocess_1d//weights" in flat
    assert features["msa_feat"].shape[:3] == (1, 4, 40) and features["extra_msa"].shape == (1, 6, 40)
    # AlphaFold2's four template slots, all masked (no template hits).
    assert features["template_mask"].shape == (1, 4) and not features["template_mask"].any()
    assert np.isfinite(model.predict(features, num_recycle=0)["plddt"]).all()


def test_bench_default_msa_sizes_pads_the_inputs_as_alphafold2_does():
    _, _, features = make_inputs(24, msa_rows=6, extra_rows=0, blocks=1, default_sizes=True)
    # AlphaFold2's default sizes: 508 clusters (512 less 4 template rows), 5120 extra rows, 4 templates,
    # all but the shallow MSA's 6 sequences masked.
    assert features["msa_feat"].shape[1] == 508 and features["extra_msa"].shape[1] == 5120
    assert features["template_mask"].shape == (1, 4)
    assert int(features["msa_mask"][0].any(axis=1).sum()) == 6 and not features["extra_msa_mask"].any()


def test_bench_memory_reports_peak_rss_next_to_the_planner(tmp_path):
    status = main(["bench", "--memory", "24", "--precisions", "bf16", "--msa-rows", "4", "--extra-rows", "8",
                   "--memory-blocks", "1", "--threads", "1", "--out", str(tmp_path)])
    assert status == 0
    (run,) = json.loads((tmp_path / "memory.json").read_text())["runs"]
    assert run["length"] == 24 and run["precision"] == "bf16" and run["blocks"] == 1
    # A real measurement of a process that holds the (one-block) model's fp32 weights.
    assert run["peak_rss_bytes"] > run["parameter_bytes"] > 10_000_000 and run["peak_counter_reset"]
    assert run["estimate_error"] == pytest.approx(run["estimate_bytes"] / run["peak_rss_bytes"] - 1, abs=1e-3)
    assert "| 24 | bf16 | 1 |" in (tmp_path / "memory.md").read_text()


def test_bench_counts_the_cpu_attention_kernels_products():
    import torch

    from af2cpu.bench.model import flop_counter

    # Batch 3, 2 heads, 5 queries, 7 keys, key size 4, value size 6: q·kᵀ and the weighted values.
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 6)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.randn(8, 9) @ torch.randn(9, 10)
    assert counter.get_total_flops() == 2 * 3 * 2 * 5 * 7 * (4 + 6) + 2 * 8 * 9 * 10
