"""Parsers for the search tools' outputs: Stockholm, A3M, HHR and hmmsearch alignments.

Each parser returns exactly what AlphaFold2's data pipeline derives from the same text (sequences
aligned to the query, deletion matrices, descriptions, template hits), and rejects malformed input
with an :class:`MsaFormatError` that names the file and the line. Stockholm files can be very large
(jackhmmer against UniRef90 writes gigabytes), so :func:`read_stockholm` streams them and keeps only
the first ``max_sequences`` records.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from af2cpu.errors import InputError


class MsaFormatError(InputError):
    """A search-tool output file that does not follow its format; the message names file and line."""


def _where(source: str | None, line_no: int | None) -> str:
    name = source or "<text>"
    return f"{name}:{line_no}" if line_no is not None else name


def _fail(source: str | None, line_no: int | None, what: str) -> MsaFormatError:
    return MsaFormatError(f"{_where(source, line_no)}: {what}")


@dataclasses.dataclass(frozen=True)
class Msa:
    """An MSA aligned to its first row (the query): no insert columns, deletions counted apart.

    ``deletion_matrix[i][j]`` is how many residues row ``i`` has inserted before query column ``j``.
    """

    sequences: Sequence[str]
    deletion_matrix: Sequence[Sequence[int]]
    descriptions: Sequence[str]

    def __post_init__(self) -> None:
        if not len(self.sequences) == len(self.deletion_matrix) == len(self.descriptions):
            raise ValueError(
                f"an MSA needs one deletion row and one description per sequence; got "
                f"{len(self.sequences)}, {len(self.deletion_matrix)} and {len(self.descriptions)}"
            )

    def __len__(self) -> int:
        return len(self.sequences)

    def truncate(self, max_seqs: int) -> Msa:
        return Msa(self.sequences[:max_seqs], self.deletion_matrix[:max_seqs], self.descriptions[:max_seqs])


@dataclasses.dataclass(frozen=True)
class TemplateHit:
    """One template found by hhsearch or hmmsearch, with its alignment to the query.

    ``indices_query``/``indices_hit`` give, per alignment column, the 0-based residue index in the
    query/hit, or -1 for a gap.
    """

    index: int
    name: str
    aligned_cols: int
    sum_probs: float | None
    query: str
    hit_sequence: str
    indices_query: list[int]
    indices_hit: list[int]


# ---------------------------------------------------------------------------------------------
# FASTA-like text (A3M, kalign output)


def parse_fasta(text: str, source: str | None = None) -> tuple[list[str], list[str]]:
    """Sequences and descriptions (header without '>') of FASTA/A3M text; blank lines ignored."""
    sequences: list[str] = []
    descriptions: list[str] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(">"):
            descriptions.append(line[1:])
            sequences.append("")
        elif line:
            if not sequences:
                raise _fail(source, line_no, "sequence data before the first '>' header")
            sequences[-1] += line
    return sequences, descriptions


_A3M_ALLOWED = re.compile(r"[A-Za-z\-]*")


def _deletions_of_a3m_row(row: str) -> tuple[str, list[int]]:
    """Split an A3M row into its match columns and the insertion counts before each of them."""
    aligned = []
    deletions = []
    pending = 0
    for char in row:
        if char.islower():
            pending += 1
        else:
            aligned.append(char)
            deletions.append(pending)
            pending = 0
    return "".join(aligned), deletions


def parse_a3m(text: str, source: str | None = None) -> Msa:
    """Parse an A3M alignment (lower case = insertion relative to the query, the first record)."""
    sequences, descriptions = parse_fasta(text, source)
    header_lines = [i for i, line in enumerate(text.splitlines(), start=1) if line.strip().startswith(">")]
    aligned_rows = []
    deletion_matrix = []
    width = None
    for row_index, row in enumerate(sequences):
        if not _A3M_ALLOWED.fullmatch(row):
            bad = next(c for c in row if not _A3M_ALLOWED.fullmatch(c))
            raise _fail(
                source, header_lines[row_index], f"record {descriptions[row_index]!r} contains {bad!r}"
            )
        aligned, deletions = _deletions_of_a3m_row(row)
        if width is None:
            width = len(aligned)
        elif len(aligned) != width:
            raise _fail(
                source,
                header_lines[row_index],
                f"record {descriptions[row_index]!r} has {len(aligned)} match columns, the query has {width}",
            )
        aligned_rows.append(aligned)
        deletion_matrix.append(deletions)
    return Msa(aligned_rows, deletion_matrix, descriptions)


def read_a3m(path: str | Path) -> Msa:
    """Parse the A3M file at `path`."""
    return parse_a3m(read_text(path), source=str(path))


# ---------------------------------------------------------------------------------------------
# Stockholm


def _stockholm_records(lines: Iterable[str], source: str | None) -> dict[str, str]:
    """Name -> concatenated aligned sequence, in first-appearance order, with format checks.

    A truncated file is rejected: a non-empty alignment must end with ``//``, every block must hold the
    rows of the first one, and every row must be as long as the query's.
    """
    records: dict[str, str] = {}
    block: list[str] = []
    first_block: list[str] | None = None
    header_seen = terminated = False
    line_no = 0

    def end_block() -> None:
        nonlocal first_block, block
        if block and first_block is None:
            first_block = block
        elif block and block != first_block:
            raise _fail(source, line_no, f"this alignment block has {len(block)} row(s), the first one "
                        f"{len(first_block)}: the file is truncated or damaged")
        block = []

    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            end_block()
            continue
        if line.startswith("# STOCKHOLM"):
            header_seen = True
            continue
        if line.startswith("//"):
            end_block()
            terminated = True
            break
        if line.startswith("#"):
            continue
        if not header_seen:
            raise _fail(source, line_no, "missing '# STOCKHOLM 1.0' header before the alignment")
        fields = line.split()
        if len(fields) != 2:
            raise _fail(source, line_no, f"expected '<name> <aligned sequence>', got {len(fields)} fields")
        name, aligned = fields
        if name in block:
            raise _fail(source, line_no, f"sequence name {name!r} appears twice in one alignment block")
        block.append(name)
        records[name] = records.get(name, "") + aligned
    if (header_seen or records) and not terminated:
        raise _fail(source, line_no, "the alignment does not end with '//': the file is truncated")
    if records:
        lengths = {len(s) for s in records.values()}
        if len(lengths) != 1:
            name = next(n for n, s in records.items() if len(s) != len(next(iter(records.values()))))
            raise _fail(source, None, f"sequence {name!r} has a different aligned length than the query")
    return records


def check_stockholm(text: str, source: str | None = None) -> None:
    """Raise MsaFormatError (naming `source`) unless `text` is a whole, well-formed Stockholm alignment."""
    _stockholm_records(text.splitlines(), source)


def read_text(path: str | Path) -> str:
    """A search result's text; bytes that are not UTF-8 become U+FFFD, which the parsers then reject
    with the file's name (instead of a UnicodeDecodeError naming nothing)."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _msa_from_stockholm_records(records: dict[str, str]) -> Msa:
    if not records:
        return Msa([], [], [])
    query = next(iter(records.values()))
    match_columns = [i for i, c in enumerate(query) if c != "-"]
    sequences = []
    deletion_matrix = []
    for aligned in records.values():
        sequences.append("".join(aligned[i] for i in match_columns))
        deletions = []
        pending = 0
        for residue, query_residue in zip(aligned, query):
            if query_residue != "-":
                deletions.append(pending)
                pending = 0
            elif residue != "-":
                pending += 1
        deletion_matrix.append(deletions)
    return Msa(sequences, deletion_matrix, list(records))


def parse_stockholm(text: str, source: str | None = None) -> Msa:
    """Parse a Stockholm alignment whose first sequence is the query."""
    return _msa_from_stockholm_records(_stockholm_records(text.splitlines(), source))


def _stockholm_line_kept(line: str, names: set[str]) -> bool:
    stripped = line.strip()
    if not stripped or stripped == "//" or line.startswith(("# STOCKHOLM", "#=GC RF")):
        return True
    if line.startswith("#=GS"):
        return line.split(maxsplit=2)[1] in names
    if line.startswith("#"):
        return False
    return line.partition(" ")[0] in names


def truncate_stockholm(src: str | Path, dst: str | Path, max_sequences: int) -> int:
    """Copy Stockholm file `src` to `dst` keeping only its first `max_sequences` sequences.

    Streams twice over `src` (never holding it in memory), keeps the header, the reference
    annotation and the ``#=GS`` lines of the kept sequences, and drops other markup, as AlphaFold2
    does when it caps jackhmmer's output. Returns the number of sequences kept.
    """
    names: set[str] = set()
    with open(src) as handle:
        for line in handle:
            if line.strip() and not line.startswith(("#", "//")):
                names.add(line.partition(" ")[0])
                if len(names) >= max_sequences:
                    break
    with open(src) as handle, open(dst, "w") as out:
        for line in handle:
            if _stockholm_line_kept(line, names):
                out.write(line)
    return len(names)


def read_stockholm(path: str | Path, max_sequences: int | None = None) -> Msa:
    """Parse the Stockholm file at `path`, streaming; keep only the first `max_sequences` rows."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        if max_sequences is None:
            records = _stockholm_records(handle, str(path))
        else:
            records = _stockholm_records(_first_stockholm_sequences(handle, max_sequences), str(path))
    return _msa_from_stockholm_records(records)


def _first_stockholm_sequences(lines: Iterable[str], max_sequences: int) -> Iterator[str]:
    """The lines of a Stockholm stream, with records after the first `max_sequences` names blanked.

    Blanked lines keep their place so that error messages still give true line numbers.
    """
    names: set[str] = set()
    for line in lines:
        if line.strip() and not line.startswith(("#", "//")):
            name = line.partition(" ")[0]
            if name not in names:
                if len(names) >= max_sequences:
                    yield "#"
                    continue
                names.add(name)
        yield line


def stockholm_to_a3m(text: str, max_sequences: int | None = None, remove_first_row_gaps: bool = True) -> str:
    """Convert Stockholm text to A3M as AlphaFold2 feeds it to hhsearch (descriptions from ``#=GS DE``)."""
    records: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "//")):
            name, aligned = line.split(maxsplit=1)
            if name not in records:
                if max_sequences and len(records) >= max_sequences:
                    continue
                records[name] = ""
            records[name] += aligned
    descriptions: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#=GS"):
            fields = line.split(maxsplit=3)
            if fields[2] != "DE" or fields[1] not in records:
                continue
            descriptions[fields[1]] = fields[3] if len(fields) == 4 else ""
            if len(descriptions) == len(records):
                break
    query_columns = [c != "-" for c in next(iter(records.values()))] if records else []
    chunks = []
    for name, aligned in records.items():
        row = aligned.replace(".", "")
        if remove_first_row_gaps:
            row = "".join(r if keep else r.lower() for keep, r in zip(query_columns, row) if keep or r != "-")
        chunks.append(f">{name} {descriptions.get(name, '')}\n{row}")
    return "\n".join(chunks) + "\n"


def deduplicate_stockholm(text: str) -> str:
    """Drop rows whose match columns repeat an earlier row (insertions ignored), keep markup."""
    records: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "//")):
            name, aligned = line.split()
            records[name] = records.get(name, "") + aligned
    if not records:
        return text
    match = [c != "-" for c in next(iter(records.values()))]
    seen: set[str] = set()
    kept: set[str] = set()
    for name, aligned in records.items():
        key = "".join(itertools.compress(aligned, match))
        if key not in seen:
            seen.add(key)
            kept.add(name)
    return "\n".join(line for line in text.splitlines() if _stockholm_line_kept(line, kept)) + "\n"


def remove_empty_columns_from_stockholm(text: str) -> str:
    """Remove columns that are gaps in every row, block by block (each block ends at ``#=GC RF``).

    The ``#=GC RF`` line itself is masked with the same columns; a block whose columns are all
    empty becomes blank lines.
    """
    lines = text.splitlines()
    out: dict[int, str] = {}
    pending: dict[int, str] = {}
    for i, line in enumerate(lines):
        if line.startswith("#=GC RF"):
            reference = line.rpartition(" ")[2]
            rows = [row.rpartition(" ")[2] for row in pending.values()]
            keep = [any(row[j] != "-" for row in rows) for j in range(len(reference))]
            pending[i] = line
            for index, block_line in pending.items():
                if any(keep):
                    prefix, _, aligned = block_line.rpartition(" ")
                    out[index] = f"{prefix} {''.join(itertools.compress(aligned, keep))}"
                else:
                    out[index] = ""
            pending = {}
        elif line.strip() and not line.startswith(("#", "//")):
            pending[i] = line
        else:
            out[i] = line
    out.update(pending)  # rows after the last ``#=GC RF`` line have no block to belong to
    return "\n".join(out[i] for i in range(len(out)))


# ---------------------------------------------------------------------------------------------
# HHR (hhsearch / hhblits result)

_HHR_SUMMARY = re.compile(
    r"Probab=(.*)[\t ]*E-value=(.*)[\t ]*Score=(.*)[\t ]*Aligned_cols=(.*)[\t ]*Identities=(.*)%"
    r"[\t ]*Similarity=(.*)[\t ]*Sum_probs=(.*)[\t ]*Template_Neff=(.*)"
)
_HHR_QUERY_ROW = re.compile(r"[\t ]*([0-9]*) ([A-Z-]*)[\t ]*([0-9]*) \([0-9]*\)")
_HHR_ANNOTATION_ROWS = ("ss_dssp", "ss_pred", "Consensus")


def _residue_indices(aligned: str, start: int) -> list[int]:
    indices = []
    for char in aligned:
        if char == "-":
            indices.append(-1)
        else:
            indices.append(start)
            start += 1
    return indices


def _parse_hhr_block(lines: list[str], first_line_no: int, source: str | None) -> TemplateHit:
    if len(lines) < 3:
        raise _fail(source, first_line_no, "hit section ends before its summary line")
    try:
        number = int(lines[0].split()[-1])
    except ValueError:
        raise _fail(source, first_line_no, f"cannot read the hit number from {lines[0]!r}") from None
    if not lines[1].startswith(">"):
        raise _fail(source, first_line_no + 1, "expected the hit's '>name description' line")
    name = lines[1][1:]
    summary = _HHR_SUMMARY.match(lines[2])
    if summary is None:
        raise _fail(source, first_line_no + 2, "cannot read the hit summary (Probab=... Template_Neff=...)")
    try:
        values = [float(x) for x in summary.groups()]
    except ValueError as exc:
        raise _fail(source, first_line_no + 2, f"bad number in hit summary: {exc}") from None
    aligned_cols, sum_probs = values[3], values[6]

    query = hit = ""
    indices_query: list[int] = []
    indices_hit: list[int] = []
    block_width = None
    for offset, line in enumerate(lines[3:], start=3):
        line_no = first_line_no + offset
        for prefix, is_query in (("Q ", True), ("T ", False)):
            if not line.startswith(prefix) or line[2:].startswith(_HHR_ANNOTATION_ROWS):
                continue
            row = _HHR_QUERY_ROW.match(line[17:])
            if row is None or not row.group(1):
                raise _fail(source, line_no, f"cannot read the alignment row {line!r}")
            start = int(row.group(1)) - 1
            aligned = row.group(2)
            if is_query:
                gaps = aligned.count("-")
                if not row.group(3) or int(row.group(3)) - start + gaps != len(aligned):
                    raise _fail(source, line_no, "query row's residue range does not match its length")
                block_width = len(aligned)
                query += aligned
                indices_query += _residue_indices(aligned, start)
            else:
                if block_width != len(aligned):
                    raise _fail(source, line_no, "template row is not as long as the query row above it")
                hit += aligned
                indices_hit += _residue_indices(aligned, start)
    if len(hit) != len(query):
        raise _fail(source, first_line_no + len(lines) - 1,
                    f"hit {number} ends without its template row: the file is truncated")
    return TemplateHit(
        index=number,
        name=name,
        aligned_cols=int(aligned_cols),
        sum_probs=sum_probs,
        query=query,
        hit_sequence=hit,
        indices_query=indices_query,
        indices_hit=indices_hit,
    )


def parse_hhr(text: str, source: str | None = None) -> list[TemplateHit]:
    """Template hits of an hhsearch/hhblits ``.hhr`` result, in file order.

    A file with an empty hit table has no hits; a file that ends before its hit table is
    rejected as truncated.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Query"):
        raise _fail(source, 1, "not an HHR file: it does not start with 'Query'")
    if not any(line.lstrip().startswith("No Hit") for line in lines):
        raise _fail(source, len(lines), "the file ends before the hit table: truncated output?")
    starts = [i for i, line in enumerate(lines) if line.startswith("No ")]
    hits = []
    for begin, end in zip(starts, starts[1:] + [len(lines)]):
        hits.append(_parse_hhr_block(lines[begin:end], begin + 1, source))
    return hits


def read_hhr(path: str | Path) -> list[TemplateHit]:
    """Parse the HHR file at `path`."""
    return parse_hhr(read_text(path), source=str(path))


# ---------------------------------------------------------------------------------------------
# hmmsearch (templates against pdb_seqres, multimer)

_HMMSEARCH_DESCRIPTION = re.compile(r"^>?([a-z0-9]+)_(\w+)/([0-9]+)-([0-9]+).*protein length:([0-9]+) *(.*)$")


def _a3m_residue_indices(aligned: str, start: int) -> list[int]:
    indices = []
    for char in aligned:
        if char == "-":
            indices.append(-1)
        elif char.islower():
            start += 1
        else:
            indices.append(start)
            start += 1
    return indices


def parse_hmmsearch_a3m(
    query_sequence: str, text: str, skip_first: bool = True, source: str | None = None
) -> list[TemplateHit]:
    """Template hits from hmmsearch's alignment (as A3M) against ``pdb_seqres.txt``.

    Non-protein chains are skipped; a protein record whose description does not read
    ``<pdbid>_<chain>/<start>-<end> ... length:<n>`` is an error.
    """
    records = list(zip(*parse_fasta(text, source)))
    if skip_first:
        records = records[1:]
    indices_query = _a3m_residue_indices(query_sequence, 0)
    hits = []
    for number, (aligned, description) in enumerate(records, start=1):
        if "mol:protein" not in description:
            continue
        match = _HMMSEARCH_DESCRIPTION.match(description.strip())
        if match is None:
            raise _fail(source, None, f"cannot read the hmmsearch hit description {description!r}")
        hits.append(
            TemplateHit(
                index=number,
                name=f"{match[1]}_{match[2]}",
                aligned_cols=sum(c.isupper() and c != "-" for c in aligned),
                sum_probs=None,
                query=query_sequence,
                hit_sequence=aligned.upper(),
                indices_query=indices_query,
                indices_hit=_a3m_residue_indices(aligned, int(match[3]) - 1),
            )
        )
    return hits


def parse_tblout_e_values(text: str) -> dict[str, float]:
    """Target name -> E-value from an HMMER ``--tblout`` table (the query itself gets 0)."""
    e_values = {"query": 0.0}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        e_values[fields[0]] = float(fields[4])
    return e_values


# ---------------------------------------------------------------------------------------------
# Species identifiers (for multimer MSA pairing)

# UniProt entry names: `sp|P69905|HBA_HUMAN` or `tr|A0A146SKV9|A0A146SKV9_FUNHE`; small BFD adds
# a trailing `_<n>`. The species mnemonic is the part after the last underscore of the name.
_UNIPROT_ID = re.compile(
    r"^(?:tr|sp)\|(?P<accession>[A-Za-z0-9]{6,10})(?:_\d)?\|(?:[A-Za-z0-9]+)_"
    r"(?P<species>[A-Za-z0-9]{1,5})(?:_\d+)?$"
)


def species_id(description: str) -> str:
    """UniProt species mnemonic of an MSA row's description ('' when it has none)."""
    fields = description.split()
    if not fields:
        return ""
    match = _UNIPROT_ID.search(fields[0].partition("/")[0].strip())
    return match.group("species") if match else ""
