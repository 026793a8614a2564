"""Job-array sharding: every target in exactly one shard, balanced cost, batch-system variables."""

import random

import pytest

from af2cpu.errors import ConfigError
from af2cpu.scheduler.sharding import (
    ArrayTask,
    resolve_array_task,
    select_shard,
    shard_targets,
    target_cost,
)


def random_batch(rng: random.Random, n: int) -> dict[str, int]:
    return {f"T{i:04d}": rng.randint(16, 2500) for i in range(n)}


def test_every_target_lands_in_exactly_one_shard_for_any_count():
    rng = random.Random(7)
    for n_targets in (0, 1, 2, 5, 17, 100):
        lengths = random_batch(rng, n_targets)
        for count in range(1, 40):
            shards = shard_targets(lengths, count)
            assert len(shards) == count
            flat = [t for shard in shards for t in shard]
            assert sorted(flat) == sorted(lengths), (n_targets, count)


def test_shard_costs_differ_by_at_most_the_largest_target():
    rng = random.Random(11)
    for trial in range(200):
        lengths = random_batch(rng, rng.randint(1, 80))
        count = rng.randint(1, 20)
        loads = [sum(target_cost(lengths[t]) for t in shard) for shard in shard_targets(lengths, count)]
        largest = max(target_cost(length) for length in lengths.values())
        assert max(loads) - min(loads) <= largest, (trial, loads)
        # Longest-processing-time is within 4/3 of the best possible makespan; the mean load and the
        # largest target are lower bounds of that best makespan.
        lower = max(sum(loads) / count, largest)
        assert max(loads) <= 4 / 3 * lower + 1e-9, (trial, loads, lower)


def test_split_is_deterministic_and_independent_of_input_order():
    rng = random.Random(3)
    lengths = random_batch(rng, 50)
    lengths["tie_a"] = lengths["tie_b"] = 300  # equal lengths order by id
    items = list(lengths.items())
    rng.shuffle(items)
    assert shard_targets(dict(items), 7) == shard_targets(lengths, 7)


def test_longest_target_goes_first_to_shard_zero():
    shards = shard_targets({"a": 100, "b": 400, "c": 300, "d": 50}, 2)
    assert shards == [["b"], ["c", "a", "d"]]  # 400² outweighs 300² + 100² + 50²


def test_slurm_variables_give_a_zero_based_index():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "10",
           "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_array_task(None, None, env) == ArrayTask(2, 8, "SLURM")
    stepped = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6",
               "SLURM_ARRAY_TASK_STEP": "2"}
    assert resolve_array_task(None, None, stepped) == ArrayTask(2, 4, "SLURM")
    assert resolve_array_task(None, None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}) == (
        ArrayTask(1, 4, "SLURM")
    )


def test_sparse_slurm_array_is_refused():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
           "SLURM_ARRAY_TASK_COUNT": "3"}  # --array=1,5,7
    with pytest.raises(ConfigError, match="not one evenly stepped range"):
        resolve_array_task(None, None, env)


def test_pbs_and_sge_variables():
    assert resolve_array_task(None, 4, {"PBS_ARRAY_INDEX": "3"}) == ArrayTask(3, 4, "PBS")
    assert resolve_array_task(None, 4, {"PBS_ARRAYID": "0"}) == ArrayTask(0, 4, "PBS")
    with pytest.raises(ConfigError, match="pass --array-count"):
        resolve_array_task(None, None, {"PBS_ARRAY_INDEX": "3"})
    sge = {"SGE_TASK_ID": "7", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "9", "SGE_TASK_STEPSIZE": "2"}
    assert resolve_array_task(None, None, sge) == ArrayTask(3, 5, "SGE")
    assert resolve_array_task(None, None, {"SGE_TASK_ID": "undefined"}) is None


def test_options_override_the_environment_and_no_array_gives_none():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_array_task(0, 2, env) == ArrayTask(0, 2, "options")
    assert resolve_array_task(None, None, {}) is None
    assert resolve_array_task(1, 3, {}) == ArrayTask(1, 3, "options")


def test_bad_index_or_count_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"array index 4 from options is outside 0..3"):
        resolve_array_task(4, 4, {})
    with pytest.raises(ConfigError, match="array index -1"):
        resolve_array_task(-1, 4, {})
    with pytest.raises(ConfigError, match="at least 1, not 0"):
        resolve_array_task(0, 0, {})
    with pytest.raises(ConfigError, match="is not an integer"):
        resolve_array_task(None, None, {"SLURM_ARRAY_TASK_ID": "x"})
    with pytest.raises(ConfigError, match="without --array-index"):
        resolve_array_task(None, 3, {})
    with pytest.raises(ConfigError, match=r"array index 9 from SLURM is outside 0..3"):
        resolve_array_task(None, None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_select_shard_refuses_more_shards_than_targets():
    lengths = {"a": 10, "b": 20}
    assert select_shard(lengths, ArrayTask(1, 2, "options")) == ["a"]
    with pytest.raises(ConfigError, match="larger than the number of targets"):
        select_shard(lengths, ArrayTask(0, 3, "SLURM"))
