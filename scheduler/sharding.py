"""Deterministic, cost-balanced splitting of a batch of targets over the tasks of a job array.

A target's cost is estimated as length² (the pair representation and the searches both grow at least
that fast). Targets are taken longest first and each goes to the shard with the least cost so far
(ties: the lowest shard), the "longest processing time" rule: every target lands in exactly one shard,
and no shard exceeds another by more than the largest single cost. The split depends only on the
targets' ids and lengths, so every array task computes the same split independently.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from af2cpu.errors import ConfigError


@dataclass(frozen=True)
class ArrayTask:
    """This process's place in a job array: `index` in 0..count-1."""

    index: int
    count: int
    source: str  # where it came from, for messages: "options", "SLURM", "PBS", "SGE"

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"array count from {self.source} must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"array index {self.index} from {self.source} is outside 0..{self.count - 1}; "
                "array indices count from 0 (e.g. `sbatch --array=0-N-1`)"
            )


def target_cost(length: int) -> int:
    """Estimated relative cost of folding a target of `length` residues."""
    return length * length


def shard_targets(lengths: Mapping[str, int], count: int) -> list[list[str]]:
    """Split targets {id: length} into `count` shards of balanced cost; ids within a shard keep
    longest-first order. Shards may be empty when there are fewer targets than shards."""
    if count < 1:
        raise ConfigError(f"the number of shards must be at least 1, not {count}")
    shards: list[list[str]] = [[] for _ in range(count)]
    heap = [(0, i) for i in range(count)]
    for target in sorted(lengths, key=lambda t: (-target_cost(lengths[t]), t)):
        load, i = heapq.heappop(heap)
        shards[i].append(target)
        heapq.heappush(heap, (load + target_cost(lengths[target]), i))
    return shards


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() in ("", "undefined"):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _from_environment(environ: Mapping[str, str]) -> tuple[int, int | None, str] | None:
    """(0-based index, count or None, source) from a batch system's variables, or None."""
    task_id = _int(environ, "SLURM_ARRAY_TASK_ID")
    if task_id is not None:
        first = _int(environ, "SLURM_ARRAY_TASK_MIN") or 0
        last = _int(environ, "SLURM_ARRAY_TASK_MAX")
        step = _int(environ, "SLURM_ARRAY_TASK_STEP") or 1
        count = _int(environ, "SLURM_ARRAY_TASK_COUNT")
        if count is None and last is not None:
            count = (last - first) // step + 1
        if (task_id - first) % step or (last is not None and count != (last - first) // step + 1):
            raise ConfigError(
                f"SLURM array task {task_id} belongs to an array that is not one evenly stepped range "
                f"(min {first}, max {last}, step {step}, count {count}); submit it as e.g. "
                "`sbatch --array=0-N-1`, or pass --array-index and --array-count"
            )
        return (task_id - first) // step, count, "SLURM"
    for name in ("PBS_ARRAY_INDEX", "PBS_ARRAYID"):
        task_id = _int(environ, name)
        if task_id is not None:
            return task_id, None, "PBS"  # PBS does not tell the array's size
    task_id = _int(environ, "SGE_TASK_ID")
    if task_id is not None:
        first = _int(environ, "SGE_TASK_FIRST") or 1
        last = _int(environ, "SGE_TASK_LAST")
        step = _int(environ, "SGE_TASK_STEPSIZE") or 1
        count = None if last is None else (last - first) // step + 1
        return (task_id - first) // step, count, "SGE"
    return None


def resolve_array_task(
    index: int | None, count: int | None, environ: Mapping[str, str]
) -> ArrayTask | None:
    """This process's array task: explicit options first, else the batch system's variables.

    SLURM: SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_MIN/MAX/STEP or SLURM_ARRAY_TASK_COUNT.
    PBS Pro / Torque: PBS_ARRAY_INDEX / PBS_ARRAYID (no count: pass `count`).
    SGE: SGE_TASK_ID with SGE_TASK_FIRST/LAST/STEPSIZE.
    The index is 0-based, (id - first) / step. Returns None outside a job array without options.
    The caller passes the environment (the CLI passes os.environ); nothing here reads it itself.
    """
    found = _from_environment(environ)
    if index is None and count is None and found is None:
        return None
    source = "options"
    if found is not None:
        env_index, env_count, env_source = found
        if index is None or count is None:
            source = env_source
        index = env_index if index is None else index
        count = env_count if count is None else count
    if index is None:
        raise ConfigError("--array-count was given without --array-index, outside a job array")
    if count is None:
        raise ConfigError(f"the array index is known ({index}, from {source}) but not the array's size; "
                          "pass --array-count")
    return ArrayTask(index, count, source)


def select_shard(lengths: Mapping[str, int], task: ArrayTask) -> list[str]:
    """The targets of `task`'s shard. More shards than targets is refused: the extra array tasks
    would do nothing, which is almost always a mistake in the submission."""
    if task.count > len(lengths):
        raise ConfigError(
            f"array count {task.count} (from {task.source}) is larger than the number of targets "
            f"({len(lengths)}); submit at most {len(lengths)} array tasks"
        )
    return shard_targets(lengths, task.count)[task.index]
