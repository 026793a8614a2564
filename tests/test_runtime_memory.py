"""The memory planner: limits, the peak-memory model, and the choice of chunk sizes."""

import dataclasses

import pytest

from af2cpu.errors import ConfigError
from af2cpu.model.options import ChunkSizes
from af2cpu.runtime.memory import (
    GIB,
    H_TRI,
    N_PARAMS,
    MemoryPlanError,
    choose_chunks,
    estimate_peak_memory,
    parse_memory_limit,
)


def test_memory_limit_accepts_auto_bytes_and_binary_units():
    assert parse_memory_limit("16G") == 16 * GIB
    assert parse_memory_limit("16GB") == 16 * GIB
    assert parse_memory_limit("512MiB") == 512 << 20
    assert parse_memory_limit("1.5T") == 3 << 39
    assert parse_memory_limit("123456") == 123456
    assert parse_memory_limit(4096) == 4096
    assert parse_memory_limit("auto", available=lambda: 7 * GIB) == 7 * GIB
    assert parse_memory_limit(" auto ") > 0  # this machine's available memory


@pytest.mark.parametrize("bad", ["lots", "16X", "-1G", "0", ""])
def test_bad_memory_limit_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="runtime.memory_limit"):
        parse_memory_limit(bad)


def test_estimate_never_shrinks_with_a_larger_problem_and_grows_with_length():
    base = {"length": 256, "msa_rows": 128, "extra_rows": 1024, "templates": 4, "precision_bytes": 4}
    reference = estimate_peak_memory(**base).total
    for name, bigger in [("msa_rows", 512), ("extra_rows", 4096), ("templates", 8)]:
        assert estimate_peak_memory(**{**base, name: bigger}).total >= reference, name
    assert estimate_peak_memory(**{**base, "length": 384}).total > reference
    assert estimate_peak_memory(**{**base, "extra_rows": 5120}).phase == "extra_msa"
    assert estimate_peak_memory(**{**base, "precision_bytes": 2}).total < reference


def test_short_target_is_dominated_by_runtime_and_parameters():
    estimate = estimate_peak_memory(16, 4, 0, 0, 4)
    assert estimate.fixed["parameters"] == N_PARAMS * 4
    assert estimate.total < estimate.fixed["runtime"] + estimate.fixed["parameters"] + (64 << 20)


def test_cache_blocks_keep_attention_logits_from_ever_existing_whole():
    L = 1000
    # Without cache blocks or chunks, a masked batch row's bias makes triangle attention cubic...
    unblocked = estimate_peak_memory(L, 16, 0, 0, 2, block_bytes=None)
    assert unblocked.largest[0] == "triangle attention"
    assert unblocked.largest[1] >= H_TRI * L**3 * 2  # the H·L³ logits
    chunked = estimate_peak_memory(L, 16, 0, 0, 2, ChunkSizes(triangle_attention=64), block_bytes=None)
    assert chunked.total < unblocked.total
    # ...with the default cache blocks every intermediate is quadratic: 1000 residues in bf16 fit
    # 6 GiB without any chunk, and doubling the length roughly quadruples the length-dependent part.
    blocked = estimate_peak_memory(L, 16, 0, 0, 2)
    assert blocked.largest[0] != "triangle attention" and blocked.total < unblocked.total / 2
    chunks, _ = choose_chunks(6 * GIB, L, 64, 256, 0, 2)
    assert chunks == ChunkSizes()
    fixed = sum(blocked.fixed.values())
    doubled = estimate_peak_memory(2 * L, 16, 0, 0, 2)
    assert 3.5 < (doubled.total - sum(doubled.fixed.values())) / (blocked.total - fixed) < 4.5


def test_everything_fits_unchunked_under_a_generous_limit():
    chunks, estimate = choose_chunks(64 * GIB, 128, 64, 256, 4, 4)
    assert chunks == ChunkSizes()
    assert estimate.total <= 64 * GIB


@pytest.mark.parametrize("limit_gib, length, precision", [(4, 512, 4), (6, 1000, 2), (3, 384, 2)])
def test_chosen_chunks_fit_and_are_the_largest_that_do(limit_gib, length, precision):
    # Chunks matter when cache blocking is off (block_bytes=None): then they bound every loop.
    limit = limit_gib * GIB
    shape = {"length": length, "msa_rows": 256, "extra_rows": 1024, "templates": 4, "precision_bytes": precision,
             "block_bytes": None}
    chunks, estimate = choose_chunks(limit, **shape)
    assert estimate.total <= limit
    assert estimate == estimate_peak_memory(chunks=chunks, **shape)
    chunked = {f.name: getattr(chunks, f.name) for f in dataclasses.fields(chunks) if getattr(chunks, f.name)}
    assert chunked, "a tight limit that needed no chunks proves nothing"
    for name, size in chunked.items():
        doubled = dataclasses.replace(chunks, **{name: size * 2})
        assert estimate_peak_memory(chunks=doubled, **shape).total > limit, f"{name}={size} could be larger"


def test_target_that_cannot_fit_fails_with_the_numbers():
    with pytest.raises(MemoryPlanError) as failure:
        choose_chunks(2 * GIB, 3000, 512, 5120, 4, 4)
    message = str(failure.value)
    assert "3000 residues with 512 MSA rows, 5120 extra MSA rows and 4 templates" in message
    assert "the memory limit is 2.00 GiB" in message
    assert "triangle multiplication" in message and "runtime.precision=bf16" in message


def test_bad_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="length ≥ 1"):
        estimate_peak_memory(0, 1, 0, 0, 4)
    with pytest.raises(ConfigError, match="precision_bytes must be 2"):
        estimate_peak_memory(10, 1, 0, 0, 3)
