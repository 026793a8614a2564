"""The memory planner: the peak-memory model, the choice of chunk sizes, the run options it derives,
and the sizes it reads from the preset's architecture."""

import dataclasses
import os

import pytest
import torch
from test_model_architecture import VARIANT

from af2cpu.config import Precision, RuntimeConfig
from af2cpu.errors import ConfigError
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.memory import (
    MemoryPlanError,
    TargetShape,
    choose_chunks,
    estimate_peak_memory,
    parameter_count,
    phase_estimates,
    plan_options,
)
from af2cpu.model.options import ChunkSizes
from af2cpu.model.params import random_params
from af2cpu.model.presets import Architecture, get_preset
from af2cpu.runtime.memory import GIB

A = Architecture()


def test_estimate_never_shrinks_with_a_larger_problem_and_grows_with_length():
    base = {"residues": 256, "msa_rows": 128, "extra_rows": 1024, "templates": 4}
    reference = estimate_peak_memory(TargetShape(**base), "fp32").total
    for name, bigger in [("msa_rows", 512), ("extra_rows", 4096), ("templates", 8)]:
        assert estimate_peak_memory(TargetShape(**{**base, name: bigger}), "fp32").total >= reference, name
    assert estimate_peak_memory(TargetShape(**{**base, "residues": 384}), "fp32").total > reference
    assert estimate_peak_memory(TargetShape(**{**base, "extra_rows": 5120}), "fp32").phase == "extra_msa"
    # bf16 activations take half the bytes, but the run keeps a bf16 copy of the weights (P · 2) beside the fp32
    # ones: below fp32 but for that copy here, and below it outright where activations dominate.
    bf16 = estimate_peak_memory(TargetShape(**base), Precision.bf16)
    assert bf16.total - parameter_count(A) * 2 < reference
    longer = TargetShape(**{**base, "residues": 1024})
    assert estimate_peak_memory(longer, Precision.bf16).total < estimate_peak_memory(longer, "fp32").total


def test_short_target_is_dominated_by_runtime_and_parameters():
    estimate = estimate_peak_memory(TargetShape(16, 4, 0, 0), "fp32")
    assert estimate.fixed["parameters"] == parameter_count(A) * 4
    assert estimate.total < estimate.fixed["runtime"] + estimate.fixed["parameters"] + (64 << 20)
    # bf16 runs keep a bf16 copy of the weights beside the fp32 parameters (primitives.kept_weight).
    assert estimate_peak_memory(TargetShape(16, 4, 0, 0), "bf16").fixed["parameters"] == parameter_count(A) * 6


def test_cache_blocks_keep_attention_logits_from_ever_existing_whole():
    L = 1000
    shape = TargetShape(L, 16, 0, 0)
    # Without cache blocks or chunks, a masked batch row's bias makes triangle attention cubic...
    unblocked = estimate_peak_memory(shape, "bf16", block_bytes=None)
    assert unblocked.largest[0] == "triangle attention"
    assert unblocked.largest[1] >= A.evoformer.triangle_num_head * L**3 * 2  # the H·L³ logits
    chunked = estimate_peak_memory(shape, "bf16", ChunkSizes(triangle_attention=64), block_bytes=None)
    assert chunked.total < unblocked.total
    # ...with the default cache blocks every intermediate is quadratic: 1000 residues in bf16 fit
    # 6 GiB without any chunk, and doubling the length roughly quadruples the length-dependent part.
    blocked = estimate_peak_memory(shape, "bf16")
    assert blocked.largest[0] != "triangle attention" and blocked.total < unblocked.total / 2
    chunks, _ = choose_chunks(6 * GIB, TargetShape(L, 64, 256, 0), "bf16")
    assert chunks == ChunkSizes()
    fixed = sum(blocked.fixed.values())
    doubled = estimate_peak_memory(TargetShape(2 * L, 16, 0, 0), "bf16")
    assert 3.5 < (doubled.total - sum(doubled.fixed.values())) / (blocked.total - fixed) < 4.5


def test_everything_fits_unchunked_under_a_generous_limit():
    chunks, estimate = choose_chunks(64 * GIB, TargetShape(128, 64, 256, 4), "fp32")
    assert chunks == ChunkSizes()
    assert estimate.total <= 64 * GIB


@pytest.mark.parametrize("limit_gib, length, precision",
                         [(4, 512, "fp32"), (6, 1000, "bf16"), (3, 384, "bf16")])
def test_chosen_chunks_fit_and_are_the_largest_that_do(limit_gib, length, precision):
    # Chunks matter when cache blocking is off (block_bytes=None): then they bound every loop.
    limit = limit_gib * GIB
    shape = TargetShape(length, 256, 1024, 4)
    chunks, estimate = choose_chunks(limit, shape, precision, block_bytes=None)
    assert estimate.total <= limit
    assert estimate == estimate_peak_memory(shape, precision, chunks, block_bytes=None)
    chunked = {f.name: getattr(chunks, f.name) for f in dataclasses.fields(chunks) if getattr(chunks, f.name)}
    assert chunked, "a tight limit that needed no chunks proves nothing"
    for name, size in chunked.items():
        doubled = dataclasses.replace(chunks, **{name: size * 2})
        assert estimate_peak_memory(shape, precision, doubled, block_bytes=None).total > limit, \
            f"{name}={size} could be larger"


def test_target_that_cannot_fit_fails_with_the_numbers():
    with pytest.raises(MemoryPlanError) as failure:
        choose_chunks(2 * GIB, TargetShape(3000, 512, 5120, 0), "fp32")
    message = str(failure.value)
    assert "3000 residues with 512 MSA rows, 5120 extra MSA rows and 0 templates" in message
    assert "the memory limit is 2.00 GiB" in message
    # The pair biases are computed a block of rows at a time, the attentions, transitions and the
    # outer product mean add their updates a block at a time, the extra MSA's column global attention
    # runs a block of columns at a time; the triangle multiplication's sums (c, L, L) cannot shrink,
    # even in the smallest channel slabs with compact outputs.
    assert "chunking cannot make triangle multiplication small enough" in message
    assert "compact outputs" in message
    assert "runtime.precision=bf16" in message


def test_triangle_multiplication_shrinks_in_channel_slabs_down_to_its_sums():
    shape = TargetShape(2000, 16, 0, 0)  # a shallow MSA: the Evoformer's triangle multiplication tops
    whole = estimate_peak_memory(shape, "fp32")
    assert whole.phase == "evoformer" and whole.largest[0] == "triangle multiplication"
    chunks, estimate = choose_chunks(7 * GIB, shape, "fp32")
    assert chunks == ChunkSizes(triangle_channels=64) and estimate.total <= 7 * GIB < whole.total
    assert not estimate.compact_outputs
    # Neither the normalised pair (c_z) nor half the projections (c) exist, a slab of 2·64 does.
    L, c = 2000, A.evoformer.num_intermediate_channel
    assert whole.largest[1] - estimate.largest[1] >= (A.pair_channel + c - 2 * 64) * L * L * 4
    # In place the update is added into the pair a block of rows at a time: slabs of one channel leave
    # the sums (c channels) and a slab's projections, still the largest term (the attentions and
    # transitions add their updates a block at a time too, with no pair-sized output).
    floor = estimate_peak_memory(shape, "fp32", ChunkSizes(triangle_channels=1), compact_outputs=True)
    assert floor.largest[0] == "triangle multiplication"
    assert c * L * L * 4 <= floor.largest[1] < (c + 3) * L * L * 4
    # Below the full outputs' floor (the (L, L, bins) arrays) the planner keeps compact outputs.
    chunks, estimate = choose_chunks(5 * GIB, shape, "fp32")
    assert estimate.compact_outputs and estimate.total <= 5 * GIB and chunks.triangle_channels is not None
    with pytest.raises(MemoryPlanError, match="cannot make triangle multiplication small enough"):
        choose_chunks(3 * GIB, shape, "fp32")


def test_bad_shape_or_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="length ≥ 1"):
        TargetShape(0, 1, 0, 0)
    with pytest.raises(ConfigError, match="precision 'fp16' is not available"):
        estimate_peak_memory(TargetShape(10, 1, 0, 0), "fp16")


def test_plan_options_carries_the_runtime_settings_and_the_chunks_that_fit():
    runtime = RuntimeConfig(precision=Precision.bf16, memory_limit="3G", compile=True, compile_cache_dir="/c")
    shape = TargetShape(384, 256, 1024, 4)
    options, estimate = plan_options(runtime, get_preset("model_1_ptm"), shape)
    assert options.precision is Precision.bf16 and options.compile and options.compile_cache_dir == "/c"
    # Compiled blocks run without cache blocks, so a tight limit needs chunks; they are the planner's.
    want = choose_chunks(3 * GIB, shape, "bf16", block_bytes=None)
    assert (options.chunks, estimate) == want and options.chunks != ChunkSizes()
    # An explicit limit overrides runtime.memory_limit; the compile cache is only for compiled runs.
    eager, _ = plan_options(dataclasses.replace(runtime, compile=False), get_preset("model_1_ptm"), shape,
                            64 * GIB)
    assert eager.chunks == ChunkSizes() and eager.compile_cache_dir is None
    with pytest.raises(MemoryPlanError):
        plan_options(runtime, get_preset("model_1_ptm"), shape, 1 * GIB)


# --- the planner reads the architecture -----------------------------------------------------------


def test_parameter_count_is_what_random_params_fill():
    with torch.device("meta"):
        model = AlphaFold(VARIANT)
    assert parameter_count(VARIANT.architecture) == sum(v.size for v in random_params(model).values())


def test_parameter_count_read_from_disk_is_the_count_of_the_modules_for_every_preset(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    from af2cpu.model import memory
    from af2cpu.model.presets import PRESETS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    architectures = {preset.architecture for preset in PRESETS.values()}  # monomer and multimer
    counted = {a: memory._count_modules(a)[0] for a in architectures}
    memory.parameter_count.cache_clear()
    assert [memory.parameter_count(a) for a in architectures] == [counted[a] for a in architectures]
    # A fresh process reads the counts from the disk: no module built, torch not even imported.
    preset = next(name for name, p in PRESETS.items() if p.multimer)
    code = ("import sys; from af2cpu.model.memory import parameter_count; from af2cpu.model.presets import "
            f"get_preset; print(parameter_count(get_preset({preset!r}).architecture), 'torch' in sys.modules)")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}).stdout.split()
    assert fresh == [str(counted[get_preset(preset).architecture]), "False"]
    # A changed source file (its recorded digest no longer matches) is counted on the modules again.
    path = memory._counts_path()
    entries = json.loads(path.read_text())
    for entry in entries.values():
        entry["count"] += 1
        entry["sources"][next(iter(entry["sources"]))] = "0" * 64
    path.write_text(json.dumps(entries))
    memory.parameter_count.cache_clear()
    try:
        assert {a: memory.parameter_count(a) for a in architectures} == counted
    finally:
        memory.parameter_count.cache_clear()  # later tests count under the user's cache again


def test_a_smaller_architecture_needs_less_memory():
    shape = TargetShape(256, 64, 512, 4)
    standard = estimate_peak_memory(shape, "fp32")
    small = estimate_peak_memory(shape, "fp32", architecture=VARIANT.architecture)
    assert small.total < standard.total
    assert all(small.fixed[k] < standard.fixed[k] for k in ("parameters", "recycling"))
    assert small.resident < standard.resident and small.largest[1] < standard.largest[1]


def test_doubling_the_pair_channel_raises_the_pair_sized_terms():
    L, b = 384, 4
    shape = TargetShape(L, 16, 0, 0)  # a shallow MSA: the pair sets the peak, in the Evoformer stack
    wide = dataclasses.replace(A, pair_channel=2 * A.pair_channel)
    before = estimate_peak_memory(shape, "fp32")
    after = estimate_peak_memory(shape, "fp32", architecture=wide)
    assert before.phase == after.phase == "evoformer"
    # The pair tensor a block holds (its updates are added in place) grows by one pair; the recycled
    # pair is counted where it lives (the embeddings phase: it is freed once embedded).
    pair = L * L * A.pair_channel
    assert after.fixed["recycling"] == before.fixed["recycling"]
    assert after.resident - before.resident == pair * b
    assert after.fixed["parameters"] > before.fixed["parameters"]
    assert after.largest[0] == before.largest[0] and after.largest[1] > before.largest[1]


# --- AlphaFold-Multimer shapes --------------------------------------------------------------------


def test_multimer_estimate_reads_the_multimer_architecture_and_sample_sizes():
    preset = get_preset("model_1_multimer_v3")
    a = preset.architecture
    # A complex of 2 x 256 residues (all chains' residues) with the preset's in-network sample sizes:
    # 508 sampled rows and 2048 extra rows, 4 template slots. The call the predict stages make.
    shape = TargetShape(512, preset.num_msa_clusters, preset.max_extra_msa, preset.max_templates)
    assert (shape.msa_rows, shape.extra_rows) == (508, 2048)
    multimer = estimate_peak_memory(shape, "fp32", architecture=a)
    monomer = estimate_peak_memory(shape, "fp32")
    assert multimer.fixed["parameters"] == parameter_count(a) * 4 != monomer.fixed["parameters"]
    # The multimer's extra-MSA features are 16 bytes a cell, not the monomer's 25 fp32 channels, but it
    # holds DeepMind's example (36 bytes a cell) for the in-network sampling of every pass.
    L, S, Se = 512, 508, 2048
    assert multimer.fixed["features"] == S * L * 49 * 4 + Se * L * 16 + (S + Se) * L * 36
    assert estimate_peak_memory(dataclasses.replace(shape, residues=1024), "fp32", architecture=a).total > multimer.total


def test_multimer_templates_are_embedded_one_at_a_time():
    # The multimer's template stage holds one template at a time besides their sum, its fp32 pair
    # features (the query's layer norm, the distogram, the input layers) made a block of rows at a
    # time, so more template slots cost nothing more and the stage stays below the extra-MSA stack's
    # peak; so does the monomer's (its attention an online softmax over templates).
    a = get_preset("model_1_multimer_v3").architecture
    shape = TargetShape(1000, 508, 2048, 4)
    four = phase_estimates(shape, "bf16", architecture=a)
    assert four["templates"] < four["extra_msa"]
    assert phase_estimates(dataclasses.replace(shape, templates=16), "bf16", architecture=a) == four
    mono = [estimate_peak_memory(TargetShape(1000, 16, 0, t), "bf16").resident for t in (4, 16)]
    assert mono[1] == mono[0]
    # Without template slots the stage is gone; chunks are chosen for the multimer's own terms.
    assert estimate_peak_memory(dataclasses.replace(shape, templates=0), "bf16", architecture=a).phase != "templates"
    # Compiled blocks (no cache blocks) at 2 x 384 residues under 6 GiB: the planner chunks the multimer's stacks.
    chunks, estimate = choose_chunks(6 * GIB, TargetShape(768, 508, 2048, 4), "fp32", block_bytes=None, architecture=a)
    assert estimate.total <= 6 * GIB and chunks.msa_row_attention is not None


@pytest.mark.parametrize("length, precision", [(2000, "fp32"), (3200, "bf16"), (3200, "fp32")])
def test_long_targets_with_alphafold2s_default_msa_sizes_fit_22_gib(length, precision):
    # The outer product mean keeps only its masked projections whole, the triangle multiplications
    # add their updates a block of rows at a time, the stacks update their pair in place, the
    # recycled pair is freed once embedded, the heads read the trunk's pair in blocks of rows, the
    # templates are combined one at a time (online softmax), and the extra MSA's column global
    # attention runs a block of columns at a time; before, 2000 residues in fp32 needed 22.98 GiB,
    # 3200 in bf16 29.21 GiB, 3200 in fp32 24.61 GiB (its whole column global attention). All keep
    # the full outputs.
    _, estimate = choose_chunks(22 * GIB, TargetShape(length, 508, 5120, 4), precision)
    assert estimate.total <= 22 * GIB and not estimate.compact_outputs


def test_4700_residues_in_bf16_fit_22_gib():
    # One pass of 4700 residues (LRP2's length) at AlphaFold2's default MSA sizes with 4 templates fits
    # 22 GiB in bf16 with compact outputs (43.4 GiB before): the stacks update their pair and MSAs in
    # place a block at a time, the templates are combined one at a time, the MSAs are embedded after
    # the templates (the MSA after the extra-MSA stack), the extra MSA's column global attention runs a
    # block of columns at a time. The template stage sets the peak (21.18 GiB), the extra-MSA stack is
    # below it (18.13; 21.29 when its column global attention was whole).
    shape = TargetShape(4700, 508, 5120, 4)
    with pytest.raises(MemoryPlanError):
        choose_chunks(22 * GIB, shape, "bf16", compact_outputs=False)
    chunks, estimate = choose_chunks(22 * GIB, shape, "bf16")
    assert estimate.total <= 22 * GIB and estimate.compact_outputs and estimate.phase == "templates"
    phases = phase_estimates(shape, "bf16", chunks, compact_outputs=True)
    assert phases["msa_embeddings"] < phases["extra_msa"] < phases["templates"]
    # The full outputs set the peak at the heads: the (L, L, bins) arrays (three fp32 arrays of 64
    # bins) and the representations' fp32 copies are what compact outputs leave out.
    full = estimate_peak_memory(shape, "bf16", chunks)
    assert full.phase == "heads" and full.total - estimate.total >= 3 * 4700**2 * 64 * 4


def test_pass_shape_of_features_counts_the_rows_the_network_computes_on():
    import numpy as np

    passes, length = 3, 10
    msa_mask = np.zeros((passes, 508, length), np.float32)
    msa_mask[:, :5] = 1
    msa_mask[1, 5:7, 3] = 1  # the second pass samples two more rows
    extra_mask = np.zeros((passes, 5120, length), np.float32)
    extra_mask[:, :11, :4] = 1
    template_mask = np.zeros((passes, 4), np.float32)
    template_mask[:, 0] = 1
    atoms = np.zeros((passes, 4, length, 37), np.float32)
    atoms[:, 2, 1, :3] = 1  # an unmasked template's atoms: its torsion rows read them, so it runs
    features = {"aatype": np.zeros((passes, length), np.int64), "msa_mask": msa_mask,
                "extra_msa_mask": extra_mask, "template_mask": template_mask, "template_all_atom_masks": atoms}
    monomer = get_preset("model_1_ptm")
    assert TargetShape.of_features(monomer, features) == TargetShape(length, 7, 11, 2)
    # Presets without templates do not run them; the largest pass is the preset's padded sizes.
    assert TargetShape.of_features(get_preset("model_3_ptm"), features).templates == 0
    assert TargetShape.largest(monomer, length) == TargetShape(length, 508, 5120, 4)
    # A single-sequence MSA without template hits: no extra rows, no template slots.
    empty = dict(features, extra_msa_mask=extra_mask[:, :0], template_mask=template_mask[:, :0],
                 template_all_atom_masks=atoms[:, :0])
    assert TargetShape.of_features(monomer, empty) == TargetShape(length, 7, 0, 0)

    # A multimer example: the network samples its clusters from the real alignments, the rest are extra rows.
    multimer = get_preset("model_1_multimer_v3")
    example = {"aatype": np.zeros(length, np.int32), "msa": np.zeros((700, length), np.int32),
               "num_alignments": np.asarray(600), "template_aatype": np.zeros((4, length), np.int32)}
    assert TargetShape.of_features(multimer, example) == TargetShape(length, 508, 92, 4)
    example["num_alignments"] = np.asarray(3000)
    assert TargetShape.of_features(multimer, example) == TargetShape(length, 508, 2048, 4)


def test_outputs_without_representations_leave_out_their_fp32_copies():
    # AlphaFold.predict(return_representations=False), af2cpu predict's default: a bf16 run converts no
    # pair or MSA representation to fp32; an fp32 run's are views of the trunk's tensors either way.
    shape = TargetShape(1500, 32, 0, 0)
    for precision, copies in (("bf16", (1500 * 1500 * A.pair_channel + 32 * 1500 * A.msa_channel) * 4), ("fp32", 0)):
        with_them = phase_estimates(shape, precision)["heads"]
        assert with_them - phase_estimates(shape, precision, representations=False)["heads"] == copies
    bf16 = RuntimeConfig(precision="bf16")
    assert (plan_options(bf16, get_preset("model_1_ptm"), shape, limit=64 * GIB)[1].total
            - plan_options(bf16, get_preset("model_1_ptm"), shape, limit=64 * GIB, representations=False)[1].total
            == (1500 * 1500 * A.pair_channel + 32 * 1500 * A.msa_channel) * 4)


@pytest.mark.parametrize("rows, hits", [(1, 0), (600, 6)], ids=["single_sequence", "deep_msa_six_hits"])
def test_pass_shape_of_the_raw_features_file_is_that_of_its_processed_features(tmp_path, rows, hits):
    import numpy as np

    from af2cpu.io import load_features_npz, npz_shapes, save_features_npz
    from af2cpu.preprocessing.features import msa_features, sequence_features
    from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
    from af2cpu.preprocessing.parsers import Msa
    from af2cpu.preprocessing.templates import no_template_features

    rng = np.random.default_rng(0)
    query = "MKVLAAGIVGLPNVGKST"
    sequences = list(dict.fromkeys([query, *("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY-"), len(query)))
                                             for _ in range(rows - 1))]))
    raw = {**sequence_features(query, "T1"), **msa_features([Msa(sequences, [[0] * len(query)] * len(sequences),
                                                                 [f"s{i}" for i in range(len(sequences))])])}
    if hits:
        raw.update({"template_aatype": np.zeros((hits, len(query), 22), np.float32),
                    "template_all_atom_masks": np.ones((hits, len(query), 37), np.float32),
                    "template_all_atom_positions": np.zeros((hits, len(query), 37, 3), np.float32),
                    "template_domain_names": np.array([b"1abc_A"] * hits, dtype=object),
                    "template_sequence": np.array([query.encode()] * hits, dtype=object),
                    "template_sum_probs": np.ones((hits, 1), np.float32)})
    else:
        raw.update(no_template_features())
    path = tmp_path / "features.npz"
    save_features_npz(path, raw)
    shapes = npz_shapes(path)  # the headers alone
    loaded = load_features_npz(path)
    assert all(shapes[name] == value.shape for name, value in loaded.items())
    # model_1_ptm: 508 clusters, 5120 extra rows, 4 templates; model_2: 1024 extra rows; model_3_ptm: 512
    # clusters, no templates. Two recycling passes: each samples its own rows.
    for name in ("model_1_ptm", "model_2", "model_3_ptm"):
        preset = get_preset(name)
        processed = process_features(loaded, PipelineSettings.from_preset(preset, num_recycle=1), seed=3)
        assert TargetShape.of_raw_features(preset, shapes) == TargetShape.of_features(preset, processed), name
    assert TargetShape.of_raw_features(get_preset("model_1_ptm"), shapes) == (
        TargetShape(18, 508, 92, 4) if rows == 600 else TargetShape(18, 1, 0, 0))


def test_templates_one_at_a_time_are_not_the_peak_of_a_long_target():
    # 4700 residues, bf16, AlphaFold2's default MSA sizes: the template stage held every template's
    # embedding and one template's fp32 features (43.39 GiB, the peak); one template at a time with
    # the online softmax's state, it is below the heads with full outputs and within 22 GiB.
    shape = TargetShape(4700, 508, 5120, 4)
    phases = phase_estimates(shape, "bf16", ChunkSizes(triangle_channels=16))
    assert phases["templates"] < phases["heads"] and phases["templates"] <= 22 * GIB
    assert phase_estimates(dataclasses.replace(shape, templates=16), "bf16",
                           ChunkSizes(triangle_channels=16))["templates"] == phases["templates"]
