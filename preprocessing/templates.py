"""Template featurization: template hits + mmCIF files -> AlphaFold2's template features.

For each hit, best first (by hhsearch's sum of probabilities), we apply AlphaFold2's prefilters
(release date, alignment coverage, near-duplicates of the query, length), read the hit's mmCIF
file, locate the hit's sequence in the chain's SEQRES (exactly, in any chain, or with X as a
wildcard; otherwise kalign realigns the hit to the SEQRES), and place the chain's atoms in atom37
layout at the aligned query positions. The first ``max_hits`` hits that survive become templates
(the input pipeline later keeps 4 of them). A hit that fails is skipped and the reason recorded;
one bad mmCIF never fails the target.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError, ToolError
from af2cpu.preprocessing import parsers, tools
from af2cpu.preprocessing.mmcif import MmcifEntry, parse_mmcif_text

TEMPLATE_FEATURE_DTYPES = {
    "template_aatype": np.float32,
    "template_all_atom_masks": np.float32,
    "template_all_atom_positions": np.float32,
    "template_domain_names": object,
    "template_sequence": object,
    "template_sum_probs": np.float32,
}
MAX_TEMPLATE_HITS = 20
# AlphaFold2 effectively disables the Cα–Cα gap check for templates ("essentially infinity").
MAX_CA_CA_DISTANCE = 150.0


class TemplateRejected(Exception):
    """A hit that cannot become a template; `serious` ones are errors, the others expected skips."""

    serious = False


class PrefilterRejected(TemplateRejected):
    """Rejected before its mmCIF is read (date, coverage, duplicate, length)."""


class FeatureError(TemplateRejected):
    """The mmCIF could not give features for this hit (no chains, no atoms, too few atoms)."""


class AlignmentError(TemplateRejected):
    """The hit cannot be located in, or realigned to, its mmCIF chain."""

    serious = True


@dataclasses.dataclass(frozen=True)
class TemplateSettings:
    """Where templates come from and AlphaFold2's limits on them."""

    mmcif_dir: str
    max_template_date: str  # YYYY-MM-DD
    max_hits: int = MAX_TEMPLATE_HITS
    obsolete_pdbs_path: str | None = None
    release_dates_path: str | None = None
    kalign_binary: str | None = None
    min_align_ratio: float = 0.1
    max_subsequence_ratio: float = 0.95
    min_template_length: int = 10

    def cutoff(self) -> datetime.datetime:
        try:
            return datetime.datetime.strptime(self.max_template_date, "%Y-%m-%d")
        except ValueError:
            raise InputError(
                f"max_template_date {self.max_template_date!r} is not a date of the form YYYY-MM-DD"
            ) from None


@dataclasses.dataclass(frozen=True)
class SkippedHit:
    """A hit that did not become a template, and why (`index`: its number in the search result)."""

    index: int
    name: str
    reason: str
    serious: bool


@dataclasses.dataclass(frozen=True)
class TemplateResult:
    """Template features (stacked over templates) and the hits skipped on the way."""

    features: dict[str, np.ndarray]
    skipped: list[SkippedHit]
    warnings: list[str]


def read_obsolete_pdbs(path: str | Path) -> dict[str, str | None]:
    """Obsolete PDB id -> replacement id (None when withdrawn without one), from PDB's obsolete.dat."""
    result: dict[str, str | None] = {}
    with open(path) as handle:
        for raw in handle:
            line = raw.strip()
            if not line.startswith("OBSLTE"):
                continue
            if len(line) > 30:
                result[line[20:24].lower()] = line[29:33].lower()
            elif len(line) == 24:
                result[line[20:24].lower()] = None
    return result


def read_release_dates(path: str | Path) -> dict[str, datetime.datetime]:
    """PDB id -> release date from a ``<id>: YYYY-MM-DD`` text file."""
    dates = {}
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                pdb_id, date = line.split(":")
                dates[pdb_id.strip()] = datetime.datetime.strptime(date.strip()[:10], "%Y-%m-%d")
            except ValueError:
                raise InputError(f"{path}:{line_no}: expected '<pdb id>: YYYY-MM-DD'") from None
    return dates


_HIT_NAME = re.compile(r"[a-zA-Z\d]{4}_[a-zA-Z0-9.]+")


def pdb_id_and_chain(hit: parsers.TemplateHit) -> tuple[str, str]:
    """(lower-case PDB id, chain id) from a hit name such as ``1abc_A description``."""
    match = _HIT_NAME.match(hit.name)
    if match is None:
        raise AlignmentError(f"hit name does not start with <pdb id>_<chain>: {hit.name!r}")
    pdb_id, chain_id = match.group(0).split("_")
    return pdb_id.lower(), chain_id


def prefilter_hit(
    hit: parsers.TemplateHit,
    pdb_id: str,
    query_sequence: str,
    release_dates: Mapping[str, datetime.datetime],
    cutoff: datetime.datetime,
    settings: TemplateSettings,
) -> None:
    """Raise PrefilterRejected if AlphaFold2 drops `hit` without reading its structure.

    # DISCREPANCY: ColabFold's packaging of the reference keeps only the date check; DeepMind's
    # AlphaFold 2.3 also applies the coverage, duplicate and length filters below, as we do.
    """
    template_sequence = hit.hit_sequence.replace("-", "")
    if pdb_id in release_dates and release_dates[pdb_id] > cutoff:
        raise PrefilterRejected(f"released {release_dates[pdb_id].date()}, after {cutoff.date()}")
    align_ratio = hit.aligned_cols / len(query_sequence)
    if align_ratio <= settings.min_align_ratio:
        raise PrefilterRejected(f"covers too little of the query (align ratio {align_ratio:.3f})")
    length_ratio = len(template_sequence) / len(query_sequence)
    if template_sequence in query_sequence and length_ratio > settings.max_subsequence_ratio:
        raise PrefilterRejected(f"an exact subsequence of the query (length ratio {length_ratio:.3f})")
    if len(template_sequence) < settings.min_template_length:
        raise PrefilterRejected(f"too short ({len(template_sequence)} residues)")


def query_to_hit_mapping(hit: parsers.TemplateHit, query_sequence: str) -> dict[int, int]:
    """Query residue index -> index in the hit's (gapless) sequence for every aligned pair."""
    if not hit.query:
        return {}
    hit_query = hit.query.replace("-", "")
    hit_sequence = hit.hit_sequence.replace("-", "")
    query_offset = query_sequence.find(hit_query)
    hit_min = min(i for i in hit.indices_hit if i > -1)
    query_min = min(i for i in hit.indices_query if i > -1)
    mapping = {}
    for q, t in zip(hit.indices_query, hit.indices_hit):
        if q == -1 or t == -1:
            continue
        q, t = q - query_min, t - hit_min
        if t >= len(hit_sequence) or q + query_offset >= len(query_sequence):
            continue
        mapping[q + query_offset] = t
    return mapping


def find_template_chain(
    template_sequence: str, chain_id: str, entry: MmcifEntry
) -> tuple[str, str, int] | None:
    """(SEQRES, chain id, offset of the hit in it): same chain, any chain, then X as a wildcard."""
    own = entry.chain_to_seqres.get(chain_id)
    if own and template_sequence in own:
        return own, chain_id, own.find(template_sequence)
    for other, seqres in entry.chain_to_seqres.items():
        if seqres and template_sequence in seqres:
            return seqres, other, seqres.find(template_sequence)
    pattern = re.compile("".join("." if aa == "X" else f"(?:{aa}|X)" for aa in template_sequence))
    for other, seqres in entry.chain_to_seqres.items():
        match = pattern.search(seqres)
        if match:
            return seqres, other, match.start()
    return None


def realign_to_seqres(
    template_sequence: str,
    chain_id: str,
    entry: MmcifEntry,
    mapping: Mapping[int, int],
    kalign_binary: str | None = None,
) -> tuple[str, dict[int, int]]:
    """Realign the hit's sequence to the chain's SEQRES with kalign; map the query onto the SEQRES.

    Needs 90 % identity over the shorter sequence. Query positions whose template residue has no
    partner in the SEQRES map to -1.
    """
    seqres = entry.chain_to_seqres.get(chain_id, "")
    if not seqres:
        if len(entry.chain_to_seqres) != 1:
            raise AlignmentError(f"chain {chain_id} not found in {entry.file_id} (not a protein chain?)")
        seqres = next(iter(entry.chain_to_seqres.values()))
    try:
        aligned = parsers.parse_a3m(tools.kalign([template_sequence, seqres], binary=kalign_binary)).sequences
        old_aligned, new_aligned = aligned
    except (ToolError, InputError, ValueError) as exc:
        raise AlignmentError(f"kalign could not align the hit to {entry.file_id}_{chain_id}: {exc}") from None
    old_to_new = {}
    old_index = new_index = -1
    identical = 0
    for old, new in zip(old_aligned, new_aligned):
        old_index += old != "-"
        new_index += new != "-"
        if old != "-" and new != "-":
            old_to_new[old_index] = new_index
            identical += old == new
    if identical / min(len(template_sequence), len(seqres)) < 0.9:
        raise AlignmentError(
            f"the hit's sequence is less than 90 % identical to {entry.file_id}_{chain_id}'s SEQRES"
        )
    new_mapping = {q: old_to_new.get(t, -1) for q, t in mapping.items()}
    return seqres.replace("-", ""), new_mapping


def chain_atom37(entry: MmcifEntry, chain_id: str, max_ca_ca: float = MAX_CA_CA_DISTANCE):
    """Atom37 positions (float64) and mask (int64) for every SEQRES residue of author chain `chain_id`.

    Selenium of MSE goes to SD (MSE reads as MET); ARG's NH1/NH2 are swapped when mislabelled
    (NH1 must be the one nearer CD). Raises FeatureError if chains are ambiguous or consecutive
    observed Cα atoms are more than `max_ca_ca` apart.
    """
    if chain_id not in entry.chain_to_seqres:
        raise FeatureError(f"no protein chain {chain_id} in {entry.file_id}")
    num_res = len(entry.chain_to_seqres[chain_id])
    chains = [c for c in entry.structure.get_chains() if c.id == chain_id]
    if len(chains) != 1:
        raise FeatureError(f"expected one chain {chain_id} in {entry.file_id}, found {len(chains)}")
    chain = chains[0]
    positions = np.zeros((num_res, rc.atom_type_num, 3))
    mask = np.zeros((num_res, rc.atom_type_num), dtype=np.int64)
    cd, nh1, nh2 = rc.atom_order["CD"], rc.atom_order["NH1"], rc.atom_order["NH2"]
    for index in range(num_res):
        site = entry.seqres_to_structure[chain_id][index]
        if site.is_missing:
            continue
        try:
            residue = chain[site.key]
        except KeyError as exc:
            raise FeatureError(f"residue {site.key} missing from {entry.file_id}_{chain_id}: {exc}") from None
        pos = np.zeros((rc.atom_type_num, 3), dtype=np.float32)
        res_mask = np.zeros(rc.atom_type_num, dtype=np.float32)
        for atom in residue.get_atoms():
            name = atom.get_name()
            if name in rc.atom_order:
                slot = rc.atom_order[name]
            elif name.upper() == "SE" and residue.get_resname() == "MSE":
                slot = rc.atom_order["SD"]
            else:
                continue
            pos[slot] = atom.get_coord()
            res_mask[slot] = 1.0
        if (
            residue.get_resname() == "ARG"
            and res_mask[cd]
            and res_mask[nh1]
            and res_mask[nh2]
            and np.linalg.norm(pos[nh1] - pos[cd]) > np.linalg.norm(pos[nh2] - pos[cd])
        ):
            pos[[nh1, nh2]] = pos[[nh2, nh1]]
            res_mask[[nh1, nh2]] = res_mask[[nh2, nh1]]
        positions[index] = pos
        mask[index] = res_mask
    _check_ca_gaps(positions, mask, max_ca_ca)
    return positions, mask


def _check_ca_gaps(positions: np.ndarray, mask: np.ndarray, max_ca_ca: float) -> None:
    ca = rc.atom_order["CA"]
    previous = None
    for i in range(len(positions)):
        if mask[i, ca]:
            if previous is not None:
                distance = np.linalg.norm(positions[i, ca] - previous)
                if distance > max_ca_ca:
                    raise FeatureError(f"Cα atoms of residues {i} and {i + 1} are {distance:.1f} Å apart")
            previous = positions[i, ca]
        else:
            previous = None


def hit_features(
    entry: MmcifEntry | None,
    pdb_id: str,
    chain_id: str,
    mapping: Mapping[int, int],
    template_sequence: str,
    query_sequence: str,
    kalign_binary: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Features of one template aligned to the query, and a warning if it had to be realigned."""
    if entry is None or not entry.chain_to_seqres:
        raise FeatureError(f"no protein chains in {pdb_id}")
    warning = None
    found = find_template_chain(template_sequence, chain_id, entry)
    if found is not None:
        seqres, chain_id, offset = found
    else:
        warning = f"{pdb_id}_{chain_id}: hit sequence not in the mmCIF SEQRES; realigned with kalign"
        seqres, mapping = realign_to_seqres(template_sequence, chain_id, entry, mapping, kalign_binary)
        template_sequence, offset = seqres, 0

    positions, mask = chain_atom37(entry, chain_id)
    num_res = len(query_sequence)
    out_positions = np.zeros((num_res, rc.atom_type_num, 3))
    out_mask = np.zeros((num_res, rc.atom_type_num))
    out_sequence = ["-"] * num_res
    for q, t in mapping.items():
        # DISCREPANCY: as in AlphaFold2, a query residue whose realigned template index is -1
        # takes the chain's last residue (Python's negative indexing); kept for identical features.
        out_positions[q] = positions[t + offset]
        out_mask[q] = mask[t + offset]
        out_sequence[q] = template_sequence[t]
    if out_mask.sum() < 5:
        raise FeatureError(f"fewer than 5 template atoms aligned to the query ({pdb_id}_{chain_id})")
    sequence = "".join(out_sequence)
    return (
        {
            "template_all_atom_positions": out_positions,
            "template_all_atom_masks": out_mask,
            "template_sequence": sequence.encode(),
            "template_aatype": rc.sequence_to_onehot(sequence, rc.HHBLITS_AA_TO_ID),
            "template_domain_names": f"{pdb_id.lower()}_{chain_id}".encode(),
        },
        warning,
    )


def _read_entry(mmcif_dir: str, pdb_id: str) -> tuple[MmcifEntry | None, str | None]:
    path = Path(mmcif_dir) / f"{pdb_id}.cif"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc}"
    result = parse_mmcif_text(pdb_id, text)
    return result.entry, result.error


def featurize_hit(
    query_sequence: str,
    hit: parsers.TemplateHit,
    settings: TemplateSettings,
    release_dates: Mapping[str, datetime.datetime],
    obsolete: Mapping[str, str | None],
) -> tuple[dict[str, Any], str | None]:
    """Features of one hit, or TemplateRejected saying why it is not a template."""
    pdb_id, chain_id = pdb_id_and_chain(hit)
    if pdb_id in obsolete and obsolete[pdb_id] is None:
        raise PrefilterRejected(f"{pdb_id} is obsolete with no replacement")
    if pdb_id not in release_dates and obsolete.get(pdb_id):
        pdb_id = obsolete[pdb_id]
    cutoff = settings.cutoff()
    prefilter_hit(hit, pdb_id, query_sequence, release_dates, cutoff, settings)
    mapping = query_to_hit_mapping(hit, query_sequence)
    template_sequence = hit.hit_sequence.replace("-", "")
    entry, parse_error = _read_entry(settings.mmcif_dir, pdb_id)
    if entry is not None and entry.release_date is not None:
        released = datetime.datetime.strptime(entry.release_date, "%Y-%m-%d")
        if released > cutoff:
            raise PrefilterRejected(f"{pdb_id} released {released.date()}, after {cutoff.date()}")
    try:
        features, warning = hit_features(
            entry, pdb_id, chain_id, mapping, template_sequence, query_sequence, settings.kalign_binary
        )
    except TemplateRejected as exc:
        if parse_error:
            raise type(exc)(f"{exc}; {parse_error}") from None
        raise
    if entry is not None and entry.release_date is None:
        note = f"{pdb_id} has no release date in its mmCIF; kept without a date check"
        warning = f"{warning}; {note}" if warning else note
    features["template_sum_probs"] = [hit.sum_probs if hit.sum_probs is not None else 0]
    return features, warning


def no_template_features() -> dict[str, np.ndarray]:
    """Template features with no templates: empty arrays, as AlphaFold2's monomer pipeline makes them."""
    return {name: np.array([], dtype=dtype) for name, dtype in TEMPLATE_FEATURE_DTYPES.items()}


def _catalogues(
    settings: TemplateSettings,
    release_dates: Mapping[str, datetime.datetime] | None,
    obsolete: Mapping[str, str | None] | None,
) -> tuple[Mapping[str, datetime.datetime], Mapping[str, str | None]]:
    """The release dates and obsolete entries given, else those the settings name (or none)."""
    if release_dates is None:
        release_dates = read_release_dates(settings.release_dates_path) if settings.release_dates_path else {}
    if obsolete is None:
        obsolete = read_obsolete_pdbs(settings.obsolete_pdbs_path) if settings.obsolete_pdbs_path else {}
    return release_dates, obsolete


def empty_template_features(num_res: int) -> dict[str, np.ndarray]:
    """A single all-zero template, as AlphaFold2-multimer uses when no hit is usable."""
    return {
        "template_aatype": np.zeros((1, num_res, len(rc.restypes_with_x) + 1), np.float32),
        "template_all_atom_masks": np.zeros((1, num_res, rc.atom_type_num), np.float32),
        "template_all_atom_positions": np.zeros((1, num_res, rc.atom_type_num, 3), np.float32),
        "template_domain_names": np.array([b""], dtype=object),
        "template_sequence": np.array([b""], dtype=object),
        "template_sum_probs": np.array([0], dtype=np.float32),
    }


def featurize_templates(
    query_sequence: str,
    hits: Sequence[parsers.TemplateHit],
    settings: TemplateSettings,
    release_dates: Mapping[str, datetime.datetime] | None = None,
    obsolete: Mapping[str, str | None] | None = None,
    hmmsearch: bool = False,
) -> TemplateResult:
    """Template features of the first `settings.max_hits` usable hits, and the skipped ones.

    hhsearch hits (monomer) are taken best first by sum of probabilities; with no usable hit the
    features are empty. hmmsearch hits (``hmmsearch=True``, multimer) are taken in file order, one
    template per distinct template sequence; with no usable hit there is one all-zero template.
    """
    release_dates, obsolete = _catalogues(settings, release_dates, obsolete)
    collected: dict[str, list] = {name: [] for name in TEMPLATE_FEATURE_DTYPES}
    skipped: list[SkippedHit] = []
    warnings: list[str] = []
    seen: set[bytes] = set()
    ordered = list(hits) if hmmsearch else sorted(hits, key=lambda h: h.sum_probs or 0.0, reverse=True)
    for hit in ordered:
        if len(collected["template_sequence"]) >= settings.max_hits:
            break
        try:
            features, warning = featurize_hit(query_sequence, hit, settings, release_dates, obsolete)
        except TemplateRejected as exc:
            skipped.append(SkippedHit(hit.index, hit.name, str(exc), exc.serious))
            continue
        if warning:
            warnings.append(warning)
        if hmmsearch:
            if features["template_sequence"] in seen:
                continue
            seen.add(features["template_sequence"])
        for name, values in collected.items():
            values.append(features[name])
    count = len(collected["template_sequence"])
    if count == 0:
        empty = empty_template_features(len(query_sequence)) if hmmsearch else no_template_features()
        return TemplateResult(empty, skipped, warnings)
    stacked = {name: np.stack(values, axis=0).astype(TEMPLATE_FEATURE_DTYPES[name])
               for name, values in collected.items()}
    return TemplateResult(stacked, skipped, warnings)
