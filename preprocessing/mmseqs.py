"""ColabFold's MMseqs2 search protocol: an A3M per query from UniRef30 and the ColabFold environmental database.

The steps and parameters are those of ColabFold's local search (``colabfold.mmseqs.search``,
``mmseqs_search_monomer`` with its defaults: sensitivity 8, the environmental database on, filtering on;
Mirdita et al. 2022, Nature Methods 19:679): per database an iterative profile search (3 iterations),
the alignments expanded to the members of each hit's cluster, realigned against the query profile,
filtered, and turned into an MSA; the UniRef30 and environmental MSAs are then concatenated per query.
All queries of a batch go through one run (the tool is much faster per query on many), and each query's
A3M is split out of the merged result afterwards.

For a complex, :func:`search_pairing_msas` also searches each distinct chain against UniProt (an MMseqs2
sequence database made from AlphaFold-Multimer's ``uniprot.fasta``) for the rows to pair: every hit, named
by its UniProt header, which ``af2cpu.preprocessing.multimer`` pairs by species as AlphaFold-Multimer
pairs its jackhmmer hits. This is af2cpu's protocol, not ColabFold's: ColabFold pairs through the UniRef100
taxonomy of its UniRef30 hits (``mmseqs pairaln``).

Two deliberate differences from ColabFold's script, neither of which changes a result:

- ColabFold 1.6 adds ``--prefilter-mode 0`` to the searches; MMseqs2 14 (Debian's) has no such option,
  and its only prefilter is the k-mer prefilter that mode 0 selects in later releases, so it is left out.
- A database without an ``.idx`` index is searched directly (its ``_seq``/``_aln`` parts, database load
  mode 0), as ColabFold does; with an index, load mode 2 (memory-mapped), ColabFold's default.

Every step runs the real ``mmseqs`` binary with an argument list; a failing step raises ToolError naming
the step and showing the tail of its output.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from af2cpu.databases import MMSEQS_PARTS, SEQUENCE_DB_PARTS, mmseqs_database_problem, mmseqs_indexed
from af2cpu.errors import DatabaseError, ToolError
from af2cpu.io import atomic_write_text
from af2cpu.preprocessing.tools import run_tool

SENSITIVITY = 8.0  # ColabFold's -s (the k-mer threshold of its server corresponds to about 8)
EXPAND_EVAL = math.inf
ALIGN_EVAL = 10  # ColabFold's values with filtering on
QSC = 0.8
MAX_ACCEPT = 100_000
DIFF = 3000
QUERY_NAME = "101"  # ColabFold names the (first) sequence of every query 101

UNIREF_MSA, ENV_MSA = "uniref.a3m", "bfd.mgnify30.metaeuk30.smag30.a3m"


def search_flags(db_load_mode: int) -> list[str]:
    return ["--num-iterations", "3", "--db-load-mode", str(db_load_mode), "-a", "-e", "0.1",
            "--max-seqs", "10000", "-s", f"{SENSITIVITY:.1f}"]


FILTER_FLAGS = ["--filter-msa", "1", "--filter-min-enable", "1000", "--diff", str(DIFF),
                "--qid", "0.0,0.2,0.4,0.6,0.8,1.0", "--qsc", "0", "--max-seq-id", "0.95"]
EXPAND_FLAGS = ["--expansion-mode", "0", "-e", str(EXPAND_EVAL), "--expand-filter-clusters", "1",
                "--max-seq-id", "0.95"]

# The UniProt search of a complex's chains (the rows to pair): AlphaFold-Multimer's jackhmmer on UniProt
# runs one iteration with E-values up to 1e-4 and pairs from its first 50,000 hits.
PAIRING_EVAL = 0.0001
PAIRING_MAX_SEQS = 50_000
PAIRING_SEARCH_FLAGS = ["-a", "-e", str(PAIRING_EVAL), "--max-seqs", str(PAIRING_MAX_SEQS), "-s", f"{SENSITIVITY:.1f}"]
PAIRING_MSA_FLAGS = ["--msa-format-mode", "5", "--filter-msa", "0"]  # every hit, as jackhmmer's MSA holds
PAIRING_FLAGS = ("search", *PAIRING_SEARCH_FLAGS, "result2msa", *PAIRING_MSA_FLAGS, "convertalis target,theader")

# What a result depends on (the search registry records it in each result's provenance).
FLAGS = ("search", *search_flags(0)[2:], "expandaln", *EXPAND_FLAGS, "align", "-e", str(ALIGN_EVAL),
         "--max-accept", str(MAX_ACCEPT), "--alt-ali", "10", "-a", "filterresult", "--qid", "0",
         "--qsc", str(QSC), "--diff", "0", "--max-seq-id", "1.0", "--filter-min-enable", "100",
         "result2msa", "--msa-format-mode", "6", *FILTER_FLAGS, "mergedbs uniref env")


def check_database(db: str, what: str, parts: tuple[str, ...] = MMSEQS_PARTS) -> None:
    """DatabaseError naming the missing part of the MMseqs2 database at prefix ``db`` and how to build it."""
    problem = mmseqs_database_problem(db, require_index=False, parts=parts)
    if problem:
        raise DatabaseError(f"{what} MMseqs2 database: {problem}; or point db.<name> at it")


class _Steps:
    """Runs the numbered steps of one search, each with what is left of the time budget."""

    def __init__(self, threads: int, timeout: float):
        self.threads = str(threads)
        self.deadline = time.monotonic() + timeout

    def __call__(self, step: str, *args: object) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ToolError(f"MMseqs2 ran out of time before step {step!r}")
        try:
            run_tool("mmseqs", [step, *map(str, args)], left)
        except ToolError as exc:
            raise ToolError(f"MMseqs2 step {step!r} failed: {exc}") from None


def _database_msa(run: _Steps, work: Path, query_profile: Path, db: str, msa: Path, first: bool) -> None:
    """search -> expandaln -> align -> filterresult -> result2msa against one database."""
    indexed = mmseqs_indexed(db)
    load = "2" if indexed else "0"
    seqs, alns = (f"{db}.idx", f"{db}.idx") if indexed else (f"{db}_seq", f"{db}_aln")
    qdb = work / "qdb"
    tag = "" if first else "_env"
    res, tmp = work / f"res{tag}", work / ("tmp" if first else "tmp3")
    query = qdb if first else query_profile
    run("search", query, db, res, tmp, "--threads", run.threads, *search_flags(int(load)))
    if first:  # the query profiles of the UniRef30 search are the queries of the env search
        run("mvdb", tmp / "latest" / "profile_1", query_profile)
        run("lndb", work / "qdb_h", f"{query_profile}_h")
        run("expandaln", qdb, seqs, res, alns, work / f"res{tag}_exp", "--db-load-mode", load,
            "--threads", run.threads, *EXPAND_FLAGS)
        profile = query_profile
    else:
        run("expandaln", query_profile, seqs, res, alns, work / f"res{tag}_exp", "-e", str(EXPAND_EVAL),
            "--expansion-mode", "0", "--db-load-mode", load, "--threads", run.threads)
        profile = tmp / "latest" / "profile_1"
    run("align", profile, seqs, work / f"res{tag}_exp", work / f"res{tag}_exp_realign", "--db-load-mode", load,
        "-e", str(ALIGN_EVAL), "--max-accept", str(MAX_ACCEPT), "--threads", run.threads, "--alt-ali", "10", "-a")
    run("filterresult", qdb, seqs, work / f"res{tag}_exp_realign", work / f"res{tag}_exp_realign_filter",
        "--db-load-mode", load, "--qid", "0", "--qsc", str(QSC), "--diff", "0", "--threads", run.threads,
        "--max-seq-id", "1.0", "--filter-min-enable", "100")
    run("result2msa", qdb, seqs, work / f"res{tag}_exp_realign_filter", msa, "--msa-format-mode", "6",
        "--db-load-mode", load, "--threads", run.threads, *FILTER_FLAGS)


def read_db_entries(prefix: Path) -> dict[int, str]:
    """The entries of an MMseqs2 database (data file + ``.index``), by key, without their NUL ends."""
    data = prefix.read_bytes()
    entries = {}
    for line in Path(f"{prefix}.index").read_text().splitlines():
        key, offset, length = line.split("\t")[:3]
        chunk = data[int(offset): int(offset) + int(length)]
        entries[int(key)] = chunk.replace(b"\0", b"").decode()
    return entries


def _batch_run(sequences: Sequence[str], outs: Sequence[Path], threads: int, timeout: float,
               search: Callable[[_Steps, Path], dict[int, str]]) -> float:
    """Runs ``search`` (steps, work folder -> A3M text by query number) on the query database of all
    ``sequences`` (``work/qdb``, each named :data:`QUERY_NAME`) and writes the A3M of ``sequences[i]``
    to ``outs[i]``. Returns the seconds it took."""
    if len(sequences) != len(outs) or not sequences:
        raise ValueError("one output path per query sequence is needed")
    started = time.perf_counter()
    outs = [Path(out) for out in outs]
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mmseqs2.", dir=outs[0].parent) as scratch:
        work = Path(scratch)
        fasta = work / "query.fas"
        fasta.write_text("".join(f">{QUERY_NAME}\n{seq}\n" for seq in sequences))
        run = _Steps(threads, timeout)
        run("createdb", fasta, work / "qdb", "--shuffle", "0", "--dbtype", "1")
        entries = search(run, work)
        for key, out in enumerate(outs):
            if key not in entries:
                raise ToolError(f"MMseqs2 wrote no MSA for query {key} ({out.name})")
            atomic_write_text(out, entries[key])
    return time.perf_counter() - started


def search_msas(
    sequences: Sequence[str],
    uniref_db: str,
    env_db: str,
    outs: Sequence[Path],
    threads: int,
    timeout: float,
) -> float:
    """One MMseqs2 run for all ``sequences``: writes the A3M of ``sequences[i]`` to ``outs[i]``.

    Returns the seconds it took. Each A3M is UniRef30's MSA followed by the environmental database's,
    both starting with the query (as ColabFold's ``final.a3m``).
    """
    check_database(uniref_db, "UniRef30")
    check_database(env_db, "ColabFold environmental")

    def search(run: _Steps, work: Path) -> dict[int, str]:
        profile = work / "prof_res"
        _database_msa(run, work, profile, uniref_db, work / UNIREF_MSA, first=True)
        _database_msa(run, work, profile, env_db, work / ENV_MSA, first=False)
        run("mergedbs", work / "qdb", work / "final.a3m", work / UNIREF_MSA, work / ENV_MSA)
        return read_db_entries(work / "final.a3m")
    return _batch_run(sequences, outs, threads, timeout, search)


def _named_rows(a3m: str, headers: dict[str, str]) -> str:
    """The A3M with each row's name (MMseqs2 writes the accession it parsed from the header) replaced by
    its whole header line in the database, ``sp|P69905|HBA_HUMAN ...``, whose species pairing reads."""
    lines = []
    for line in a3m.splitlines():
        if line.startswith(">"):
            name = line[1:].split("\t")[0].strip()
            line = f">{headers.get(name, name)}"
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def search_pairing_msas(
    sequences: Sequence[str],
    uniprot_db: str,
    outs: Sequence[Path],
    threads: int,
    timeout: float,
) -> float:
    """One MMseqs2 run for all ``sequences`` against UniProt (an MMseqs2 sequence database made by
    ``mmseqs createdb`` from AlphaFold-Multimer's ``uniprot.fasta``): writes the A3M of every hit of
    ``sequences[i]`` to ``outs[i]``, the query first, each hit named by its UniProt header. These are
    the rows a complex pairs by species (``af2cpu.preprocessing.multimer``), as AlphaFold-Multimer pairs
    its jackhmmer hits against the same database: one search (jackhmmer's one iteration) with jackhmmer's
    E-value cut-off, at most :data:`PAIRING_MAX_SEQS` hits, unfiltered. Returns the seconds it took."""
    check_database(uniprot_db, "UniProt", SEQUENCE_DB_PARTS)
    load = "2" if mmseqs_indexed(uniprot_db) else "0"

    def search(run: _Steps, work: Path) -> dict[int, str]:
        qdb, res = work / "qdb", work / "res_uniprot"
        run("search", qdb, uniprot_db, res, work / "tmp", "--threads", run.threads, "--db-load-mode", load,
            *PAIRING_SEARCH_FLAGS)
        run("result2msa", qdb, uniprot_db, res, work / "uniprot.a3m", "--db-load-mode", load,
            "--threads", run.threads, *PAIRING_MSA_FLAGS)
        run("convertalis", qdb, uniprot_db, res, work / "headers", "--format-output", "target,theader",
            "--db-output", "1", "--db-load-mode", load, "--threads", run.threads)
        msas = read_db_entries(work / "uniprot.a3m")
        named = {}
        for key, table in read_db_entries(work / "headers").items():
            headers = dict(line.split("\t", 1) for line in table.splitlines() if "\t" in line)
            named[key] = _named_rows(msas.get(key, ""), headers)
        return {key: named.get(key, msa) for key, msa in msas.items()}
    return _batch_run(sequences, outs, threads, timeout, search)
