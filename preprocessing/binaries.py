"""Finding the external search tools and reading their versions.

Tool versions are part of every search stage's cache key and of `af2cpu doctor`'s report.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from af2cpu.errors import ToolError

# name -> (arguments that print a version banner, regex capturing the version, Debian package)
TOOLS: dict[str, tuple[list[str], str, str]] = {
    "jackhmmer": (["-h"], r"HMMER\s+([\w.]+)", "hmmer"),
    "hmmsearch": (["-h"], r"HMMER\s+([\w.]+)", "hmmer"),
    "hmmbuild": (["-h"], r"HMMER\s+([\w.]+)", "hmmer"),
    "hhblits": (["-h"], r"HHblits\s+([\w.]+)", "hhsuite"),
    "hhsearch": (["-h"], r"HHsearch\s+([\w.]+)|HHblits\s+([\w.]+)", "hhsuite"),
    "kalign": (["--version"], r"kalign\s+\(?([\w.]+)", "kalign"),
    "mmseqs": (["version"], r"^\s*(\S+)", "mmseqs2"),
}

# Environment variables that point at a specific binary, e.g. AF2CPU_JACKHMMER=/opt/hmmer/bin/jackhmmer.
ENV_PREFIX = "AF2CPU_"


def install_hint(name: str) -> str:
    """What to do when tool `name` is missing."""
    package = TOOLS.get(name, ([], "", name))[2]
    return (
        f"install it (Debian/Ubuntu: `apt-get install {package}`; conda: `conda install -c bioconda "
        f"{package}`) or point {ENV_PREFIX}{name.upper()} at the binary"
    )


def find_binary(name: str, override: str | None = None) -> Path:
    """Path of tool `name`: `override`, then $AF2CPU_<NAME>, then PATH. Raises ToolError if absent."""
    candidate = override or os.environ.get(ENV_PREFIX + name.upper())
    if candidate:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ToolError(f"{name}: {candidate} is not an executable file; {install_hint(name)}")
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} was not found on PATH; {install_hint(name)}")
    return Path(found)


@functools.cache
def _version_of(path: str, name: str) -> str:
    args, pattern, _ = TOOLS[name]
    try:
        proc = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{name} at {path} could not be run to read its version: {exc}") from None
    match = re.search(pattern, proc.stdout + proc.stderr)
    if not match:
        return "unknown"
    return next(g for g in match.groups() if g)


def binary_version(name: str, override: str | None = None) -> str:
    """Version string of tool `name` (e.g. '3.3.2' for jackhmmer), 'unknown' if it prints none."""
    return _version_of(str(find_binary(name, override)), name)
