"""The search tools, each a pure function: (query, database(s), cpus, output path, timeout) -> file.

Every search runs the real binary with AlphaFold2's flags and an argument list (never a shell
string), in a private temporary folder, and moves its result into place atomically, so a search is
safe to run as a separate Dask task beside the others and a killed search leaves no half-written
file behind. A failure or timeout raises :class:`ToolError` with the tail of the tool's stderr.
Each result carries the tool's version, which belongs to the cache key of the stage.

Each tool runs in a process group of its own (a new session): a timeout, an interrupt (Ctrl-C, or
SIGTERM, which the command line turns into one) or the exit of the process that started it kills the
whole group, so the helpers a tool forks never outlive af2cpu.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from af2cpu.errors import DatabaseError, ToolError
from af2cpu.preprocessing import parsers
from af2cpu.preprocessing.binaries import binary_version, find_binary

STDERR_TAIL_CHARS = 2_000
DEFAULT_TIMEOUT_S = 24 * 3600.0

JACKHMMER_FLAGS = [
    "--noali", "--F1", "0.0005", "--F2", "0.00005", "--F3", "0.0000005",
    "--incE", "0.0001", "-E", "0.0001", "-N", "1",
]  # fmt: skip
HHBLITS_FLAGS = [
    "-n", "3", "-e", "0.001", "-maxseq", "1000000", "-realign_max", "100000",
    "-maxfilt", "100000", "-min_prefilter_hits", "1000",
]  # fmt: skip
HHSEARCH_FLAGS = ["-maxseq", "1000000"]
HMMSEARCH_FLAGS = [
    "--noali", "--F1", "0.1", "--F2", "0.1", "--F3", "0.1", "--incE", "100", "-E", "100",
    "--domE", "100", "--incdomE", "100",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ToolRun:
    """What one search produced and how: the result file, the tool and its version, the time."""

    path: Path
    tool: str
    version: str
    seconds: float


def _tail(data: bytes | str | None) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= STDERR_TAIL_CHARS else "..." + text[-STDERR_TAIL_CHARS:]


# Process groups of the tools this process is running (one per run_tool call in flight).
_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_running_tools() -> int:
    """Kill the process group of every tool this process is running; returns how many there were.

    Runs at interpreter exit and when a Dask worker closes (af2cpu.scheduler.cluster), so a search
    cancelled with its worker leaves nothing behind.
    """
    with _RUNNING_LOCK:
        groups = list(_RUNNING)
    for pgid in groups:
        _kill_group(pgid)
    return len(groups)


atexit.register(kill_running_tools)


def run_tool(name: str, args: Sequence[str], timeout: float, binary: str | None = None) -> float:
    """Run tool `name` with argument list `args`; return seconds taken, raise ToolError on failure.

    The tool leads a process group of its own, killed whole on a timeout or an interrupt, and after
    the tool exits (helpers it left running go with it).
    """
    path = find_binary(name, binary)
    command = [str(path), *map(str, args)]
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ToolError(f"{name} could not be started ({path}): {exc}") from None
    with _RUNNING_LOCK:
        _RUNNING.add(proc.pid)
    try:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            _, stderr = proc.communicate()
            raise ToolError(
                f"{name} timed out after {timeout:g} s (command: {' '.join(command)}); its process group "
                f"was killed; stderr tail:\n{_tail(stderr)}"
            ) from None
        except BaseException:  # KeyboardInterrupt, SystemExit: take the tool's whole group down with us
            _kill_group(proc.pid)
            proc.wait()
            raise
    finally:
        _kill_group(proc.pid)
        with _RUNNING_LOCK:
            _RUNNING.discard(proc.pid)
    if proc.returncode != 0:
        raise ToolError(
            f"{name} failed with exit status {proc.returncode} (command: {' '.join(command)}); "
            f"stderr tail:\n{_tail(stderr) or _tail(stdout)}"
        )
    return time.perf_counter() - started


def check_fasta_database(path: str | Path, what: str) -> Path:
    """The FASTA database at `path`, or DatabaseError naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseError(
            f"{what} database {path} does not exist; download it (AlphaFold2's "
            f"scripts/download_all_data.sh layout) or point db.root / db.<name> at it"
        )
    return path


def check_hh_database(prefix: str | Path, what: str) -> str:
    """The HH-suite database prefix, or DatabaseError if none of its ``<prefix>_*`` files exist."""
    prefix = str(prefix)
    if not glob.glob(prefix + "_*"):
        raise DatabaseError(
            f"{what} database {prefix} not found (no {prefix}_a3m.ffdata, _hhm, _cs219 files); "
            f"download it or point db.root / db.<name> at its prefix"
        )
    return prefix


def _publish(tmp: Path, out: Path) -> Path:
    os.replace(tmp, out)  # the scratch folder lies next to `out`: same file system, atomic
    return out


def _scratch(out: Path) -> tempfile.TemporaryDirectory:
    out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent)


def jackhmmer(
    query_fasta: str | Path,
    database: str | Path,
    out_sto: str | Path,
    cpus: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_sequences: int | None = None,
    binary: str | None = None,
) -> ToolRun:
    """One jackhmmer iteration of the query against a FASTA database; writes a Stockholm MSA.

    With `max_sequences`, only the first that many sequences are kept (streamed, never loaded whole).
    """
    database = check_fasta_database(database, "jackhmmer")
    out_sto = Path(out_sto)
    with _scratch(out_sto) as tmp:
        raw = Path(tmp) / "output.sto"
        args = ["-o", "/dev/null", "-A", raw, *JACKHMMER_FLAGS, "--cpu", str(cpus), query_fasta, database]
        seconds = run_tool("jackhmmer", args, timeout, binary)
        if not raw.exists():
            raw.write_text("")
        if max_sequences is not None:
            capped = Path(tmp) / "capped.sto"
            parsers.truncate_stockholm(raw, capped, max_sequences)
            raw = capped
        _publish(raw, out_sto)
    return ToolRun(out_sto, "jackhmmer", binary_version("jackhmmer", binary), seconds)


def hhblits(
    query_fasta: str | Path,
    databases: Sequence[str | Path],
    out_a3m: str | Path,
    cpus: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    binary: str | None = None,
) -> ToolRun:
    """hhblits (3 iterations) of the query against HH-suite databases (BFD, UniRef30); writes A3M."""
    return _run_hh("hhblits", databases, Path(out_a3m), timeout, binary, lambda raw: [
        "-i", query_fasta, "-cpu", str(cpus), "-oa3m", raw, "-o", "/dev/null", *HHBLITS_FLAGS])


def _run_hh(tool, databases, out: Path, timeout, binary, arguments) -> ToolRun:
    """Run HH-suite `tool` with `arguments(raw_output)` plus `-d` for each database, publish to `out`."""
    prefixes = [check_hh_database(db, tool) for db in databases]
    with _scratch(out) as tmp:
        raw = Path(tmp) / f"output{out.suffix}"
        args = list(arguments(raw))
        for prefix in prefixes:
            args += ["-d", prefix]
        seconds = run_tool(tool, args, timeout, binary)
        _publish(raw, out)
    return ToolRun(out, tool, binary_version(tool, binary), seconds)


def template_query_msa(uniref90_sto: str | Path) -> str:
    """The Stockholm MSA AlphaFold2 searches templates with: UniRef90 hits, deduplicated, no empty columns."""
    text = parsers.read_text(uniref90_sto)
    parsers.check_stockholm(text, str(uniref90_sto))  # a damaged file is named, not half-used
    return parsers.remove_empty_columns_from_stockholm(parsers.deduplicate_stockholm(text))


def hhsearch(
    query_a3m: str | Path,
    databases: Sequence[str | Path],
    out_hhr: str | Path,
    cpus: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    binary: str | None = None,
) -> ToolRun:
    """hhsearch of an A3M query MSA against HH-suite databases (PDB70); writes an HHR file."""
    return _run_hh("hhsearch", databases, Path(out_hhr), timeout, binary, lambda raw: [
        "-i", query_a3m, "-o", raw, *HHSEARCH_FLAGS, "-cpu", str(cpus)])


def search_pdb70(
    uniref90_sto: str | Path,
    pdb70: str | Path,
    out_hhr: str | Path,
    cpus: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    binary: str | None = None,
) -> ToolRun:
    """Monomer template search: the UniRef90 MSA (as AlphaFold2 prepares it) with hhsearch on PDB70."""
    out_hhr = Path(out_hhr)
    with _scratch(out_hhr) as tmp:
        query = Path(tmp) / "query.a3m"
        query.write_text(parsers.stockholm_to_a3m(template_query_msa(uniref90_sto)))
        return hhsearch(query, [pdb70], out_hhr, cpus, timeout, binary)


def hmmbuild(
    msa_sto: str | Path,
    out_hmm: str | Path,
    timeout: float = DEFAULT_TIMEOUT_S,
    binary: str | None = None,
    hand: bool = True,
) -> ToolRun:
    """Build a protein profile HMM from a Stockholm MSA.

    With `hand` (AlphaFold2's template search), match columns are those of the ``#=GC RF`` line,
    i.e. the query's columns in jackhmmer output.
    """
    out_hmm = Path(out_hmm)
    with _scratch(out_hmm) as tmp:
        raw = Path(tmp) / "output.hmm"
        args = (["--hand"] if hand else []) + ["--amino", raw, msa_sto]
        seconds = run_tool("hmmbuild", args, timeout, binary)
        _publish(raw, out_hmm)
    return ToolRun(out_hmm, "hmmbuild", binary_version("hmmbuild", binary), seconds)


def search_pdb_seqres(
    uniref90_sto: str | Path,
    pdb_seqres: str | Path,
    out_sto: str | Path,
    cpus: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    binary: str | None = None,
    hmmbuild_binary: str | None = None,
) -> ToolRun:
    """Multimer template search: hmmbuild on the UniRef90 MSA, hmmsearch against pdb_seqres.txt."""
    database = check_fasta_database(pdb_seqres, "hmmsearch (pdb_seqres)")
    out_sto = Path(out_sto)
    with _scratch(out_sto) as tmp:
        msa = Path(tmp) / "query.sto"
        msa.write_text(template_query_msa(uniref90_sto))
        hmm = hmmbuild(msa, Path(tmp) / "query.hmm", timeout, hmmbuild_binary).path
        raw = Path(tmp) / "output.sto"
        args = [*HMMSEARCH_FLAGS, "--cpu", str(cpus), "-A", raw, hmm, database]
        seconds = run_tool("hmmsearch", args, timeout, binary)
        if not raw.exists():
            raw.write_text("")
        _publish(raw, out_sto)
    return ToolRun(out_sto, "hmmsearch", binary_version("hmmsearch", binary), seconds)


def kalign(sequences: Sequence[str], timeout: float = 600.0, cpus: int = 1, binary: str | None = None) -> str:
    """Align `sequences` with kalign; returns the alignment as A3M text (records ``sequence <i>``)."""
    for i, sequence in enumerate(sequences, start=1):
        if len(sequence) < 6:
            raise ToolError(f"kalign needs sequences of at least 6 residues; sequence {i} is {sequence!r}")
    with tempfile.TemporaryDirectory(prefix="af2cpu_kalign_") as tmp:
        src = Path(tmp) / "input.fasta"
        out = Path(tmp) / "output.a3m"
        src.write_text("".join(f">sequence {i}\n{s}\n" for i, s in enumerate(sequences, start=1)))
        run_tool("kalign", ["-i", src, "-o", out, "-format", "fasta", "-n", str(cpus)], timeout, binary)
        return out.read_text()
