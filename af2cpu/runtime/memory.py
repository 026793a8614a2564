"""Memory sizes of the machine: the memory limit a run may use (`runtime.memory_limit`).

What the network needs within that limit is the model's memory planner, :mod:`af2cpu.model.memory`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from af2cpu.errors import ConfigError
from af2cpu.runtime.topology import available_memory

GIB = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def is_auto(value: object) -> bool:
    """Whether a memory setting (`runtime.memory_limit`, `scheduler.memory`) says "auto": left to af2cpu."""
    return str(value).strip().lower() == "auto"


def parse_memory_limit(value: str | int, available: Callable[[], int] | None = None) -> int:
    """Bytes from `runtime.memory_limit`: "auto" (available memory), a byte count, or "16G" / "512MiB"
    / "1.5T" (binary units, as SLURM and Docker read them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    else:
        text = str(value).strip()
        if is_auto(text):
            return (available or available_memory)()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.upper())
        if not match:
            raise ConfigError(
                f"runtime.memory_limit={value!r} is not a size; write auto, a number of bytes, or e.g. 16G"
            )
        amount = int(float(match.group(1)) * _UNITS[match.group(2)])
    if amount <= 0:
        raise ConfigError(f"runtime.memory_limit={value!r} must be positive")
    return amount
