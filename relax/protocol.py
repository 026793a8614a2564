"""AlphaFold2's relaxation protocol: restrained Amber minimisation rounds until no violations remain.

``relax(structure)`` returns the relaxed PDB text and a :class:`RelaxReport`. It raises only for
input that cannot describe a protein Amber can parametrise (:class:`af2cpu.errors.InputError`,
naming the residue). Everything that goes wrong while relaxing a valid input — OpenMM failures
after all retries, the wall-clock limit — is recorded in the report, and the unrelaxed structure is
returned, so a relaxation problem never stops a batch.

The protocol (Jumper et al. 2021, Suppl. 1.8.6, and AlphaFold2's ``amber_minimize``):

1. a round cleans the structure (pdbfixer: missing heavy atoms, hydrogens), restrains heavy atoms
   with 10 kcal/mol/Å² springs to where they start, and minimises to 2.39 kcal/mol/Å, retrying a
   failed minimisation up to ``max_attempts`` times;
2. violations (bonds, angles, clashes; see :mod:`af2cpu.relax.violations`) are checked on the
   minimised heavy atoms; residues that violate are excluded from the restraints of later rounds;
3. rounds repeat, each starting (and restrained) where the previous ended, with hydrogens placed
   anew, until there are no violations or ``max_outer_iterations`` rounds have run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from af2cpu.common import protein as protein_io
from af2cpu.common import residue_constants as rc
from af2cpu.common.protein import ParsedPdb, Protein, format_atom_line, format_ter_line, residue_label
from af2cpu.config import RelaxConfig
from af2cpu.errors import InputError
from af2cpu.relax import amber
from af2cpu.relax.violations import Violations, find_violations

logger = logging.getLogger(__name__)

_BACKBONE_FRAME = ("N", "CA", "C")
_RETRY_JITTER = 0.02  # Å per failed attempt, at most 5 times that


@dataclasses.dataclass
class RelaxReport:
    """What a relaxation did. Energies in kcal/mol, distances in Å, times in seconds.

    ``relaxed`` is False when relaxation failed; ``failure`` then says why and the returned PDB is
    the unrelaxed input. ``violations_before``/``violations_after`` are :func:`violation_summary`
    dicts (a complex's with its inter-chain clashes and broken peptide bonds). ``rmsd`` is over the input's heavy atoms, without superposition (restraints keep the frame).
    """

    relaxed: bool = False
    failure: str | None = None
    initial_energy: float | None = None
    final_energy: float | None = None
    rmsd: float | None = None
    violations_before: dict = dataclasses.field(default_factory=dict)
    violations_after: dict = dataclasses.field(default_factory=dict)
    attempts: int = 0
    rounds: int = 0
    excluded_residues: list[str] = dataclasses.field(default_factory=list)
    added_heavy_atoms: int = 0
    removed_heterogens: list[str] = dataclasses.field(default_factory=list)
    chain_breaks: list[str] = dataclasses.field(default_factory=list)
    threads: int = 1
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def violation_summary(violations: Violations, labels: list[str], chain_ids: list[str] | None = None) -> dict[str, Any]:
    """Totals and the per-residue counts of the residues that violate.

    With ``chain_ids`` of more than one chain (a complex; the letter of each ``chain_index``) also:
    ``interchain_clash`` (the clashing atom pairs of two chains, part of ``clash``),
    ``interchain_clash_pairs`` (``{"A-B": pairs}``) and ``broken_peptide_bonds`` (peptide bonds
    C(i)-N(i+1) outside the tolerance, part of ``bond``: where a chain comes apart).
    """
    per_residue = [
        {
            "residue": labels[i],
            "bond": int(violations.bond[i]),
            "angle": int(violations.angle[i]),
            "clash": int(violations.clash[i]),
        }
        for i in np.flatnonzero(violations.mask)
    ]
    summary = {
        "residues": violations.num_residues,
        "bond": violations.num_bond,
        "angle": violations.num_angle,
        "clash": violations.num_clash,
        "per_residue": per_residue,
    }
    if chain_ids is not None and len(chain_ids) > 1:
        summary["interchain_clash"] = violations.num_interchain_clash
        summary["interchain_clash_pairs"] = {
            f"{chain_ids[a]}-{chain_ids[b]}": n for (a, b), n in violations.interchain_clashes.items()}
        summary["broken_peptide_bonds"] = violations.num_peptide_bond
    return summary


# --------------------------------------------------------------------------------------------------
# Input


def _as_parsed(structure: Protein | ParsedPdb | str) -> ParsedPdb:
    if isinstance(structure, ParsedPdb):
        return structure
    if isinstance(structure, Protein):
        if structure.num_residues == 0:
            raise InputError("the protein to relax has no residues")
        return ParsedPdb(
            protein=structure,
            residue_names=[rc.resnames[a] for a in structure.aatype],
            chain_ids=[protein_io.PDB_CHAIN_IDS[i] for i in range(int(structure.chain_index.max()) + 1)],
            skipped_heterogens=[],
        )
    if isinstance(structure, str):
        if not structure.strip():
            raise InputError("the PDB text to relax is empty")
        return protein_io.parse_pdb(structure)
    raise TypeError(f"relax() takes a Protein or PDB text, not {type(structure).__name__}")


def _as_relax_config(config) -> RelaxConfig:
    """RelaxConfig from None (AlphaFold2's defaults), a RelaxConfig or the composed `relax` config node."""
    if config is None:
        return RelaxConfig()
    if isinstance(config, RelaxConfig):
        return config
    return OmegaConf.to_object(config)


def _labels(parsed: ParsedPdb) -> list[str]:
    prot = parsed.protein
    return [
        residue_label(
            parsed.residue_names[i], parsed.chain_ids[prot.chain_index[i]], int(prot.residue_index[i])
        )
        for i in range(prot.num_residues)
    ]


def _segments(parsed: ParsedPdb, labels: list[str]) -> tuple[list[int], list[str]]:
    """Split chains where residue numbers are not consecutive (missing residues).

    Returns the segment number of each residue and a description of each break. Amber has no
    parameters for a lone amino acid, so a one-residue segment is an input error.

    DISCREPANCY: AlphaFold2 hands the whole chain to OpenMM, which bonds every pair of consecutive
    residues, so a gap of missing residues becomes one very long peptide bond that minimisation
    pulls shut. Predictions have no gaps, so this only changes the relaxation of experimental
    structures, whose gaps we keep open.
    """
    prot = parsed.protein
    new_segment = np.ones(prot.num_residues, dtype=bool)
    new_segment[1:] = (np.diff(prot.chain_index) != 0) | (np.diff(prot.residue_index) != 1)
    segment = np.cumsum(new_segment) - 1
    breaks = [
        f"between {labels[i - 1]} and {labels[i]}"
        for i in range(1, prot.num_residues)
        if new_segment[i] and prot.chain_index[i] == prot.chain_index[i - 1]
    ]
    sizes = np.bincount(segment)
    for i in range(prot.num_residues):
        if sizes[segment[i]] == 1:
            raise InputError(
                f"residue {labels[i]} stands alone (a one-residue chain, or cut off by chain breaks on "
                "both sides); Amber has no parameters for an isolated amino acid: remove it to relax the rest"
            )
    return segment.tolist(), breaks


def _check_input(parsed: ParsedPdb, labels: list[str]) -> None:
    prot = parsed.protein
    for name, chain, number in parsed.dropped_residues:
        what = (
            "has none of the heavy atoms of an amino acid"
            if name in rc.restype_3to1
            else "is not one of the 20 standard amino acids"
        )
        raise InputError(
            f"residue {residue_label(name, chain, number)} {what}; relaxation (amber99sb) covers proteins "
            "only: remove it, or replace it by the standard residue it stands for"
        )
    for i in range(prot.num_residues):
        if prot.aatype[i] == rc.unk_restype_index:
            raise InputError(
                f"residue {labels[i]} is not one of the 20 standard amino acids; relaxation (amber99sb) "
                "covers proteins only: remove it, or replace it by the standard residue it stands for"
            )
        missing = [a for a in _BACKBONE_FRAME if prot.atom_mask[i, rc.atom_order[a]] < 0.5]
        if missing:
            raise InputError(
                f"residue {labels[i]} lacks backbone atom(s) {', '.join(missing)}; relaxation adds missing "
                "side-chain atoms and hydrogens but not backbone atoms: complete or remove the residue"
            )


# --------------------------------------------------------------------------------------------------
# Structure <-> PDB text for OpenMM and for output


def _openmm_input_pdb(prot: Protein, segments: list[int]) -> str:
    """Heavy atoms as PDB text with one chain per segment, so OpenMM never bonds across a gap."""
    lines = []
    serial = 1
    for i in range(prot.num_residues):
        if i > 0 and segments[i] != segments[i - 1]:
            lines.append("TER")
        chain = protein_io.PDB_CHAIN_IDS[segments[i] % protein_io.PDB_MAX_CHAINS]
        for j, name in enumerate(rc.atom_types):
            if prot.atom_mask[i, j] > 0.5:
                lines.append(
                    format_atom_line(
                        serial,
                        name,
                        rc.resnames[prot.aatype[i]],
                        chain,
                        int(prot.residue_index[i]),
                        prot.atom_positions[i, j],
                        0.0,
                        name[0],
                    )
                )
                serial += 1
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def _residue_atoms(
    structure: amber.CleanStructure, positions: np.ndarray
) -> list[list[tuple[str, str, np.ndarray]]]:
    """(name, element, xyz) of every atom, grouped by residue in topology order."""
    residues = []
    for residue in structure.topology.residues():
        residues.append([(atom.name, atom.element.symbol, positions[atom.index]) for atom in residue.atoms()])
    return residues


def _heavy_atom_protein(template: Protein, residues: list[list[tuple[str, str, np.ndarray]]]) -> Protein:
    positions = np.zeros_like(template.atom_positions)
    mask = np.zeros_like(template.atom_mask)
    for i, atoms in enumerate(residues):
        for name, element, xyz in atoms:
            if element != "H" and name in rc.atom_order:
                positions[i, rc.atom_order[name]] = xyz
                mask[i, rc.atom_order[name]] = 1.0
    return dataclasses.replace(template, atom_positions=positions, atom_mask=mask)


def _output_pdb(parsed: ParsedPdb, residues: list[list[tuple[str, str, np.ndarray]]]) -> str:
    """PDB text with the input's chain letters and residue numbers, each residue's CA B-factor on all its atoms."""
    prot = parsed.protein
    b_factor = prot.b_factors[:, rc.atom_order["CA"]]
    lines = []
    serial = 1
    for i, atoms in enumerate(residues):
        resname = rc.resnames[prot.aatype[i]]
        chain = parsed.chain_ids[prot.chain_index[i]]
        number = int(prot.residue_index[i])
        for name, element, xyz in atoms:
            lines.append(format_atom_line(serial, name, resname, chain, number, xyz, b_factor[i], element))
            serial += 1
        if i == prot.num_residues - 1 or prot.chain_index[i + 1] != prot.chain_index[i]:
            lines.append(format_ter_line(serial, resname, chain, number))
            serial += 1
    lines.append("END".ljust(80))
    return "\n".join(lines) + "\n"


def _input_atoms(prot: Protein) -> list[list[tuple[str, str, np.ndarray]]]:
    return [
        [
            (name, name[0], prot.atom_positions[i, j])
            for j, name in enumerate(rc.atom_types)
            if prot.atom_mask[i, j] > 0.5
        ]
        for i in range(prot.num_residues)
    ]


def _heavy_atom_rmsd(before: Protein, after: Protein) -> float:
    both = (before.atom_mask > 0.5) & (after.atom_mask > 0.5)
    diff = before.atom_positions[both] - after.atom_positions[both]
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=-1))))


# --------------------------------------------------------------------------------------------------
# The protocol


def _minimize_with_retries(structure, exclude, config: RelaxConfig, threads: int, deadline: float, report):
    """AlphaFold2 retries a failed minimisation up to max_attempts times before giving up.

    DISCREPANCY: AlphaFold2 retries from the same start (its failures were mostly GPU faults);
    on the deterministic CPU platform that repeats the failure, so retries start from positions
    moved by 0.02 Å per attempt (e.g. to pull apart exactly overlapping atoms).
    """
    errors = []
    for attempt in range(max(1, config.max_attempts)):
        report.attempts += 1
        try:
            return amber.minimize(
                structure,
                stiffness=config.stiffness,
                tolerance=config.tolerance,
                max_iterations=config.max_iterations,
                exclude_residues=sorted(exclude),
                threads=threads,
                deadline=deadline,
                jitter=_RETRY_JITTER * min(attempt, 5),
                seed=attempt,
            )
        except amber.RelaxTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 — OpenMM raises its own types, ValueError for NaN, ...
            errors.append(f"{type(exc).__name__}: {exc}".strip())
            logger.info("minimisation attempt %d failed: %s", report.attempts, errors[-1])
    raise amber.MinimizationError(
        f"minimisation failed after {len(errors)} attempts; last error: {errors[-1]}"
    )


def relax(
    structure: Protein | ParsedPdb | str,
    config: RelaxConfig | None = None,
    threads: int = 1,
) -> tuple[str, RelaxReport]:
    """Relax a protein with AlphaFold2's Amber protocol; return (PDB text, report).

    `structure` is a :class:`Protein` (e.g. a prediction, pLDDT in its B-factors) or PDB text.
    The PDB text holds every atom of the relaxed protein including hydrogens, with the input's chain
    letters and residue numbers and each residue's input CA B-factor (pLDDT) on all of its atoms.
    `threads` is the OpenMM CPU platform's thread count. `config` (a RelaxConfig or the composed
    config's `relax` node) defaults to AlphaFold2's settings; `config.timeout_s` bounds the
    wall-clock time of the whole relaxation. Its `mode` and `threads` are for the pipeline and the
    CLI and are not read here.

    Raises InputError for input Amber cannot parametrise (empty, unknown or non-protein residues,
    missing N/CA/C atoms, a lone residue). Any failure while relaxing is recorded in the report
    (``relaxed=False``, ``failure``) and the unrelaxed structure is returned instead.
    """
    config = _as_relax_config(config)
    threads = max(1, int(threads))
    start = time.monotonic()
    deadline = start + float(config.timeout_s)
    parsed = _as_parsed(structure)
    prot = parsed.protein
    labels = _labels(parsed)
    _check_input(parsed, labels)
    segments, breaks = _segments(parsed, labels)

    before = find_violations(prot)
    report = RelaxReport(
        violations_before=violation_summary(before, labels, parsed.chain_ids),
        removed_heterogens=list(parsed.skipped_heterogens),
        chain_breaks=breaks,
        threads=int(threads),
    )
    try:
        current = prot
        exclude: set[int] = set()
        random_state = None
        while True:
            if time.monotonic() > deadline:
                raise amber.RelaxTimeout("the time limit ran out before a minimisation round")
            cleaned = amber.clean(_openmm_input_pdb(current, segments), random_state)
            random_state = cleaned.random_state
            if cleaned.topology.getNumResidues() != prot.num_residues:
                raise amber.MinimizationError(
                    f"pdbfixer returned {cleaned.topology.getNumResidues()} residues for {prot.num_residues}"
                )
            if report.rounds == 0:
                report.added_heavy_atoms = cleaned.added_heavy_atoms
            result = _minimize_with_retries(cleaned, exclude, config, threads, deadline, report)
            report.rounds += 1
            if report.rounds == 1 and np.isfinite(result.initial_energy):
                report.initial_energy = result.initial_energy  # None when atoms overlap exactly
            residues = _residue_atoms(cleaned, result.positions)
            current = _heavy_atom_protein(prot, residues)
            after = find_violations(current)
            logger.info(
                "relax round %d: energy %.1f -> %.1f kcal/mol, %d violating residues, %d excluded",
                report.rounds,
                result.initial_energy,
                result.final_energy,
                after.num_residues,
                len(exclude),
            )
            if after.num_residues == 0 or report.rounds >= config.max_outer_iterations:
                break
            exclude |= set(np.flatnonzero(after.mask).tolist())
        report.final_energy = result.final_energy
        report.violations_after = violation_summary(after, labels, parsed.chain_ids)
        report.rmsd = _heavy_atom_rmsd(prot, current)
        report.excluded_residues = [labels[i] for i in sorted(exclude)]
        report.relaxed = True
        pdb_text = _output_pdb(parsed, residues)
    except Exception as exc:  # noqa: BLE001 — a relaxation problem must never stop the pipeline
        report.failure = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, amber.RelaxTimeout):
            report.failure += f" (relax.timeout_s={config.timeout_s})"
        report.relaxed = False
        report.violations_after = report.violations_before
        report.rmsd = 0.0
        pdb_text = _output_pdb(parsed, _input_atoms(prot))
        logger.warning("relaxation failed, keeping the unrelaxed structure: %s", report.failure)
    report.seconds = time.monotonic() - start
    return pdb_text, report
