"""Reading query sequences: FASTA records -> validated :class:`Target` objects with safe ids.

A target's id names its output folder, so it is derived from the FASTA header but can never
escape the output directory: only ``[A-Za-z0-9._-]``, no leading dot, bounded length, unique
within one input (case-insensitively, for case-insensitive file systems), and never the name of a
batch-level file or folder of the output folder (``summary.json``, ``logs``...: such a record gets
``summary.json_2``). A UTF-8 byte-order mark at the start of the file is ignored. An invalid record
is an :class:`InvalidRecord` error that carries the id the record would have had, so the batch summary
lists it as skipped. The original header is
kept as the target's description and written to the outputs.

Complexes: a record's sequence split on ``:`` is one chain each (ColabFold's convention; one batch
mixes monomers and complexes), and ``complex=True`` reads a whole file as one complex whose chains are
its records (AlphaFold2's multimer convention). Chains get the ids A, B, ... in order
(:data:`CHAIN_IDS`); a complex keeps each chain's header (the record's for ``:``-chains, each
record's with ``complex=True``). A one-chain target is a monomer, exactly as before, unless
``complex=True`` makes it a complex of one chain (AlphaFold2's monomer-in-multimer run).
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
CHAIN_SEPARATOR = ":"
# Chain ids as AlphaFold2 names the chains of a complex (the PDB format's 62 single-character ids).
CHAIN_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclasses.dataclass(frozen=True)
class Chain:
    """One chain of a target: its id (A, B, ...), its sequence, and the FASTA header it came from."""

    id: str
    sequence: str
    description: str


@dataclasses.dataclass(frozen=True)
class Target:
    """One query: a folder-safe unique `id`, the original FASTA `description`, the sequence, its chains.

    A monomer has one chain, ``A``, with the target's sequence. A complex has several; its `sequence` is
    the chains' sequences joined by ``:`` (as a ColabFold record writes it), so it still identifies the
    target (``target.json``, the folder's claim). `multimer` makes a one-chain target a complex of one
    chain (``--complex`` on a one-record file: AlphaFold2's monomer-in-multimer run).
    """

    id: str
    description: str
    sequence: str
    chains: tuple[Chain, ...] = ()
    multimer: bool = False

    def __post_init__(self) -> None:
        if not is_safe_id(self.id):
            raise InputError(f"target id {self.id!r} is not safe as a folder name")
        if not self.chains:
            object.__setattr__(self, "chains", (Chain(CHAIN_IDS[0], self.sequence, self.description),))
        elif CHAIN_SEPARATOR.join(c.sequence for c in self.chains) != self.sequence:
            raise ValueError(f"target {self.id!r}: its sequence is not its chains' sequences joined by ':'")

    @property
    def is_complex(self) -> bool:
        """True for a target of more than one chain, or one that `multimer` forces through the complexes'
        searches and features."""
        return len(self.chains) > 1 or self.multimer

    @property
    def num_residues(self) -> int:
        """The residues of all its chains together."""
        return sum(len(c.sequence) for c in self.chains)

    def unique_chains(self) -> list[Chain]:
        """The first chain of each distinct sequence, in order (a homomer's chains are searched once)."""
        firsts: dict[str, Chain] = {}
        for chain in self.chains:
            firsts.setdefault(chain.sequence, chain)
        return list(firsts.values())


def chains_json(target: Target) -> list[dict] | None:
    """A complex's chains as ``target.json`` lists them (id, original header, sequence); None for a monomer."""
    if not target.is_complex:
        return None
    return [{"id": c.id, "description": c.description, "sequence": c.sequence} for c in target.chains]


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


def _read_records(text: str, source: str) -> list[tuple[int, str, str]]:
    """(line number, header, sequence in capitals without whitespace) of each record of FASTA `text`."""
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
    return [(line_no, header, "".join("".join(chunks).split()).upper()) for line_no, header, chunks in records]


def _chain_error(label: str, sequence: str) -> str | None:
    """What is wrong with one chain's (or a monomer's) sequence, or None."""
    bad = sorted(set(sequence) - _QUERY_LETTERS)
    if not sequence:
        return f"{label} has an empty sequence"
    if bad:
        return (f"{label} contains {''.join(bad)!r}; a protein sequence may only contain amino-acid "
                "letters (remove stop codons '*', gaps '-', digits)")
    return None


def _record_chains(label: str, header: str, sequence: str) -> tuple[list[Chain], str | None]:
    """The chains of one record (split on ':'), or the error naming the record and the bad chain."""
    if CHAIN_SEPARATOR not in sequence:
        return [Chain(CHAIN_IDS[0], sequence, header)], _chain_error(label, sequence)
    parts = sequence.split(CHAIN_SEPARATOR)
    if not parts[-1]:
        return [], f"{label} ends with ':'; ':' separates the chains of a complex, remove the last one"
    if len(parts) > len(CHAIN_IDS):
        return [], f"{label} has {len(parts)} chains, more than the {len(CHAIN_IDS)} chain ids AlphaFold2 has"
    chains = [Chain(CHAIN_IDS[i], part, header) for i, part in enumerate(parts)]
    for chain in chains:
        error = _chain_error(f"{label} chain {chain.id}", chain.sequence)
        if error and not chain.sequence:
            error += " (two ':' in a row, or ':' at the start)"
        if error:
            return [], error
    return chains, None


def parse_fasta_batch(
    text: str, source: str = "<input>", max_length: int = DEFAULT_MAX_LENGTH, complex: bool = False
) -> tuple[list[Target], list[InvalidRecord]]:
    """Valid targets of FASTA `text`, and one error per invalid record (naming file, line, record).

    A record whose sequence holds ``:`` is a complex of one chain per part; with `complex` the whole
    file is one complex, one chain per record (each may be split on ``:`` too), named after its first
    record (a file of one single-chain record is a complex of one chain). `max_length` bounds a target's residues (all chains together). A batch goes on without its
    invalid records; `parse_fasta_targets` is the strict variant.
    """
    records = _read_records(text, source)
    groups: list[list[tuple[int, int, str, str]]] = (  # (record index, line, header, sequence) per target
        [[(i, *r) for i, r in enumerate(records, start=1)]] if complex
        else [[(i, *r)] for i, r in enumerate(records, start=1)])

    targets: list[Target] = []
    errors: list[tuple[int, str, str]] = []  # (record index, header, message)
    taken: set[str] = {name.lower() for name in BatchDir.reserved_names()}
    for group in groups:
        index, _, header, _ = group[0]
        chains: list[Chain] = []
        error = None
        for record_index, line_no, record_header, sequence in group:
            label = f"{source}:{line_no}: record {record_index} ({record_header or 'no header'!r})"
            found, error = _record_chains(label, record_header, sequence)
            if error:
                break
            chains += found
        if error is None and len(chains) > len(CHAIN_IDS):
            error = f"{source}: {len(chains)} chains, more than the {len(CHAIN_IDS)} chain ids AlphaFold2 has"
        if error is None:
            chains = [dataclasses.replace(c, id=CHAIN_IDS[i]) for i, c in enumerate(chains)]
            total = sum(len(c.sequence) for c in chains)
            if total > max_length:
                label = f"{source}:{group[0][1]}: record {index} ({header or 'no header'!r})"
                what = f"{len(chains)} chains of {total} residues together" if len(chains) > 1 else f"{total} residues long"
                error = f"{label} is {what}, more than the limit of {max_length}"
        if error is not None:
            errors.append((index, header, error))
            continue
        target_id = _unique(safe_id(header, fallback=f"target_{index}"), taken)
        sequence = CHAIN_SEPARATOR.join(c.sequence for c in chains)
        targets.append(Target(id=target_id, description=header, sequence=sequence, chains=tuple(chains),
                              multimer=complex))
    # Ids of skipped records come after the targets', so a skipped record never renames a target.
    invalid = [InvalidRecord(message, _unique(safe_id(header, fallback=f"target_{index}"), taken))
               for index, header, message in errors]
    return targets, invalid


def parse_fasta_targets(
    text: str, source: str = "<input>", max_length: int = DEFAULT_MAX_LENGTH, complex: bool = False
) -> list[Target]:
    """Validated targets of FASTA `text`; the first invalid record is an error naming file, line, record."""
    targets, errors = parse_fasta_batch(text, source, max_length, complex)
    if errors:
        raise errors[0]
    return targets


def _read_fasta_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read FASTA file {path}: {exc}") from None


def read_fasta_targets(path: str | Path, max_length: int | None = None, complex: bool = False) -> list[Target]:
    """Validated targets of the FASTA file at `path` (`complex`: the whole file is one complex)."""
    path = Path(path)
    return parse_fasta_targets(_read_fasta_text(path), str(path), max_length or DEFAULT_MAX_LENGTH, complex)


def read_fasta_batch(
    path: str | Path, max_length: int | None = None, complex: bool = False
) -> tuple[list[Target], list[InvalidRecord]]:
    """Valid targets of the FASTA file at `path`, and the errors of its invalid records."""
    path = Path(path)
    return parse_fasta_batch(_read_fasta_text(path), str(path), max_length or DEFAULT_MAX_LENGTH, complex)


def write_query_fasta(target: Target, path: str | Path) -> Path:
    """Write `target` (a monomer) as a one-record FASTA file named by its safe id (the search tools' query input)."""
    if target.is_complex:
        raise ValueError(f"{target.id} is a complex: its chains are searched one by one")
    path = Path(path)
    path.write_text(f">{target.id}\n{target.sequence}\n")
    return path


def read_query_sequence(path: str | Path) -> str:
    """The sequence of a query FASTA that :func:`write_query_fasta` wrote."""
    return "".join(line.strip() for line in Path(path).read_text().splitlines()[1:])
