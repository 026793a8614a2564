"""Reading query sequences: FASTA records -> validated :class:`Target` objects with safe ids.

A target's id names its output folder, so it is derived from the FASTA header but can never
escape the output directory: only ``[A-Za-z0-9._-]``, no leading dot, bounded length, unique
within one input (case-insensitively, for case-insensitive file systems), and never the name of a
batch-level file or folder of the output folder (``summary.json``, ``logs``...: such a record gets
``summary.json_2``). A UTF-8 byte-order mark at the start of the file is ignored. An invalid record
is an :class:`InvalidRecord` error that carries the id the record would have had, so the batch summary
lists it as skipped. The original header is
kept as the target's description and written to the outputs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from af2cpu.errors import InputError
from af2cpu.layout import BatchDir

MAX_ID_LENGTH = 64
DEFAULT_MAX_LENGTH = 10_000

# Letters AlphaFold2 accepts in a query. The 20 amino acids and X are encoded as themselves; the
# ambiguous or rare codes B, J, O, U, Z are kept in the sequence (the search tools understand them)
# and become X in `aatype`, exactly as AlphaFold2's sequence features encode them.
_QUERY_LETTERS = set("ACDEFGHIKLMNPQRSTVWYXBJOUZ")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class Target:
    """One query protein: a folder-safe unique `id`, the original FASTA `description`, the sequence."""

    id: str
    description: str
    sequence: str

    def __post_init__(self) -> None:
        if not is_safe_id(self.id):
            raise InputError(f"target id {self.id!r} is not safe as a folder name")


class InvalidRecord(InputError):
    """A FASTA record a batch skips: the message names file, line and record; ``record_id`` is the id
    (distinct from every target's) under which the batch summary lists it."""

    def __init__(self, message: str, record_id: str = ""):
        super().__init__(message)
        self.record_id = record_id


def is_safe_id(target_id: str) -> bool:
    """True if `target_id` can be used as one path component under an output folder."""
    return (
        0 < len(target_id) <= MAX_ID_LENGTH
        and not _UNSAFE_ID_CHARS.search(target_id)
        and not target_id.startswith(".")
    )


def safe_id(header: str, fallback: str = "target") -> str:
    """A folder-safe id from a FASTA header: its first word, unsafe characters replaced by '_'."""
    words = header.split()
    candidate = _UNSAFE_ID_CHARS.sub("_", words[0]) if words else ""
    candidate = candidate.lstrip("._")[:MAX_ID_LENGTH].rstrip("_") or fallback
    return candidate


def _unique(candidate: str, taken: set[str]) -> str:
    result = candidate
    n = 2
    while result.lower() in taken:
        suffix = f"_{n}"
        result = candidate[: MAX_ID_LENGTH - len(suffix)] + suffix
        n += 1
    taken.add(result.lower())
    return result


def parse_fasta_batch(
    text: str, source: str = "<input>", max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[list[Target], list[InvalidRecord]]:
    """Valid targets of FASTA `text`, and one error per invalid record (naming file, line, record).

    A batch goes on without its invalid records; `parse_fasta_targets` is the strict variant.
    """
    records: list[tuple[int, str, list[str]]] = []
    text = text.removeprefix("\ufeff")  # a byte-order mark (editors on Windows save one)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(">"):
            records.append((line_no, line[1:].strip(), []))
        elif line:
            if not records:
                raise InputError(f"{source}:{line_no}: sequence data before the first '>' header")
            records[-1][2].append(line)
    if not records:
        raise InputError(f"{source}: no FASTA records (a record starts with a '>' header line)")

    targets: list[Target] = []
    errors: list[tuple[int, str, str]] = []  # (record index, header, message)
    taken: set[str] = {name.lower() for name in BatchDir.reserved_names()}
    for index, (line_no, header, chunks) in enumerate(records, start=1):
        label = f"{source}:{line_no}: record {index} ({header or 'no header'!r})"
        sequence = "".join("".join(chunks).split()).upper()
        bad = sorted(set(sequence) - _QUERY_LETTERS)
        if not sequence:
            errors.append((index, header, f"{label} has an empty sequence"))
        elif bad:
            errors.append((index, header, (
                f"{label} contains {''.join(bad)!r}; a protein sequence may only contain amino-acid "
                "letters (remove stop codons '*', gaps '-', digits)"
            )))
        elif len(sequence) > max_length:
            errors.append((index, header,
                f"{label} is {len(sequence)} residues long, more than the limit of {max_length}"
            ))
        else:
            target_id = _unique(safe_id(header, fallback=f"target_{index}"), taken)
            targets.append(Target(id=target_id, description=header, sequence=sequence))
    # Ids of skipped records come after the targets', so a skipped record never renames a target.
    invalid = [InvalidRecord(message, _unique(safe_id(header, fallback=f"target_{index}"), taken))
               for index, header, message in errors]
    return targets, invalid


def parse_fasta_targets(
    text: str, source: str = "<input>", max_length: int = DEFAULT_MAX_LENGTH
) -> list[Target]:
    """Validated targets of FASTA `text`; the first invalid record is an error naming file, line, record."""
    targets, errors = parse_fasta_batch(text, source, max_length)
    if errors:
        raise errors[0]
    return targets


def _read_fasta_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read FASTA file {path}: {exc}") from None


def read_fasta_targets(path: str | Path, max_length: int | None = None) -> list[Target]:
    """Validated targets of the FASTA file at `path`."""
    path = Path(path)
    return parse_fasta_targets(_read_fasta_text(path), str(path), max_length or DEFAULT_MAX_LENGTH)


def read_fasta_batch(path: str | Path, max_length: int | None = None) -> tuple[list[Target], list[InvalidRecord]]:
    """Valid targets of the FASTA file at `path`, and the errors of its invalid records."""
    path = Path(path)
    return parse_fasta_batch(_read_fasta_text(path), str(path), max_length or DEFAULT_MAX_LENGTH)


def write_query_fasta(target: Target, path: str | Path) -> Path:
    """Write `target` as a one-record FASTA file named by its safe id (the search tools' query input)."""
    path = Path(path)
    path.write_text(f">{target.id}\n{target.sequence}\n")
    return path


def read_query_sequence(path: str | Path) -> str:
    """The sequence of a query FASTA that :func:`write_query_fasta` wrote."""
    return "".join(line.strip() for line in Path(path).read_text().splitlines()[1:])
