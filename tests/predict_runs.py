"""Running the af2cpu command in tests: to its end, or killed (SIGKILL, the whole process group) as soon
as some stage records exist, as a crash or an out-of-memory kill would stop it."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def af2cpu(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python -m af2cpu ARGS` with 2 OpenMP threads, its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "af2cpu", *args], capture_output=True, text=True, env=env,
                          timeout=1800, check=False, **kwargs)


def kill_once_recorded(args: Sequence[str], records: Sequence[Path], timeout_s: float) -> None:
    """Start `python -m af2cpu ARGS`, SIGKILL it with every process it started once all `records` exist."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "af2cpu", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + timeout_s
    while not all(r.is_file() for r in records):
        assert proc.poll() is None, "af2cpu ended before writing the records it was to be killed after"
        assert time.time() < deadline, f"the records were not written in {timeout_s:.0f} s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
