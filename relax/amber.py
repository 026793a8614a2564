"""One restrained Amber minimisation with OpenMM, as AlphaFold2's relaxation runs it.

A round: write the heavy atoms to PDB text, let pdbfixer add missing heavy atoms and hydrogens
(pH 7, never residues), build amber99sb without solvent (H-bond lengths constrained, no cutoff),
restrain heavy atoms harmonically to their starting positions (except excluded residues), and
minimise with L-BFGS on OpenMM's CPU platform.

Units: AlphaFold2 states its settings in kcal/mol and Å; OpenMM works in kJ/mol and nm. AlphaFold2's
"energy tolerance 2.39 kcal/mol" is passed to OpenMM as 2.39 kcal/mol/Å, a force: OpenMM 8 stops
when the root-mean-square force component falls below it, so 2.39 kcal/mol/Å = 100 kJ/mol/nm.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random
import time
from collections.abc import Collection, Sequence

import numpy as np

KJ_PER_KCAL = 4.184
ANGSTROM_PER_NM = 10.0


class RelaxTimeout(Exception):
    """The wall-clock limit of a relaxation ran out."""


class MinimizationError(Exception):
    """OpenMM could not minimise the structure (non-finite energy, constraint failure, ...)."""


def tolerance_in_openmm_units(tolerance_kcal_per_mol_angstrom: float) -> float:
    """AlphaFold2's tolerance (kcal/mol/Å) as OpenMM 8's force tolerance in kJ/mol/nm."""
    return tolerance_kcal_per_mol_angstrom * KJ_PER_KCAL * ANGSTROM_PER_NM


def stiffness_in_openmm_units(stiffness_kcal_per_mol_angstrom2: float) -> float:
    """Restraint stiffness from kcal/mol/Å² to kJ/mol/nm²."""
    return stiffness_kcal_per_mol_angstrom2 * KJ_PER_KCAL * ANGSTROM_PER_NM**2


@dataclasses.dataclass
class CleanStructure:
    """pdbfixer's result: every heavy atom and hydrogen, residues in the order they came in."""

    topology: object  # openmm.app.Topology
    positions: np.ndarray  # (atoms, 3) Å
    added_heavy_atoms: int
    random_state: object = None  # Python's random state after placing the hydrogens


@dataclasses.dataclass
class Minimized:
    """One minimisation: energies in kcal/mol, positions in Å."""

    initial_energy: float
    final_energy: float
    positions: np.ndarray
    iterations: int


def clean(pdb_text: str, random_state: object | None = None) -> CleanStructure:
    """Add missing heavy atoms (side chains, terminal OXT) and hydrogens at pH 7 with pdbfixer.

    Residues are never added: pdbfixer's missing-residue search is skipped, so gaps stay gaps.
    Hydrogens start from positions drawn from `random_state` (a ``random.getstate()``; None seeds
    0); the state after drawing is returned in the result, so that successive rounds continue one
    stream, as they do when AlphaFold2 relaxes in a fresh process.
    """
    import openmm  # deferred: OpenMM loads only where a structure is relaxed
    from openmm import unit  # deferred: OpenMM loads only where a structure is relaxed
    from pdbfixer import PDBFixer  # deferred: OpenMM loads only where a structure is relaxed

    # Hydrogens are placed at random and then minimised (50 steps) by OpenMM's Modeller on the CPU
    # platform's default thread count. A given random state and one thread make that reproducible;
    # the caller's random stream and the platform default are restored afterwards.
    platform = openmm.Platform.getPlatformByName("CPU")
    saved_random = random.getstate()
    saved_threads = platform.getPropertyDefaultValue("Threads")
    try:
        if random_state is None:
            random.seed(0)
        else:
            random.setstate(random_state)
        platform.setPropertyDefaultValue("Threads", "1")
        fixer = PDBFixer(pdbfile=io.StringIO(pdb_text), platform=platform)
        fixer.missingResidues = {}
        fixer.findMissingAtoms()
        added = sum(len(a) for a in fixer.missingAtoms.values()) + sum(
            len(a) for a in fixer.missingTerminals.values()
        )
        fixer.addMissingAtoms(seed=0)
        fixer.addMissingHydrogens(7.0)
        random_state = random.getstate()
    finally:
        platform.setPropertyDefaultValue("Threads", saved_threads)
        random.setstate(saved_random)
    positions = np.array(fixer.positions.value_in_unit(unit.angstrom), dtype=np.float64)
    return CleanStructure(
        topology=fixer.topology, positions=positions, added_heavy_atoms=added, random_state=random_state
    )


@functools.lru_cache(maxsize=1)
def _force_field():
    from openmm import app  # deferred: OpenMM loads only where a structure is relaxed

    return app.ForceField("amber99sb.xml")


def _restraint_force(topology, positions: np.ndarray, stiffness: float, exclude_residues: Collection[int]):
    """Harmonic springs (kJ/mol/nm²) tying each heavy atom outside `exclude_residues` to its position."""
    import openmm  # deferred: OpenMM loads only where a structure is relaxed

    force = openmm.CustomExternalForce("0.5 * k_restraint * ((x - x0)^2 + (y - y0)^2 + (z - z0)^2)")
    force.addGlobalParameter("k_restraint", stiffness)
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    exclude = set(exclude_residues)
    for atom in topology.atoms():
        if atom.element is not None and atom.element.symbol == "H":
            continue
        if atom.residue.index in exclude:
            continue
        force.addParticle(atom.index, (positions[atom.index] / ANGSTROM_PER_NM).tolist())
    return force


def _deadline_reporter(deadline: float):
    import openmm  # deferred: OpenMM loads only where a structure is relaxed

    class _StopAtDeadline(openmm.MinimizationReporter):
        """Stops L-BFGS when the wall clock passes the deadline (checked every iteration)."""

        def __init__(self):
            super().__init__()
            self.iterations = 0
            self.timed_out = False

        def report(self, iteration, x, grad, args):
            # `iteration` restarts with each of OpenMM's constraint-tightening passes; count calls.
            self.iterations += 1
            if time.monotonic() > deadline:
                self.timed_out = True
                return True
            return False

    return _StopAtDeadline()


# Atoms (nearly) on top of each other give energies far above this (kcal/mol; two carbons 0.3 Å
# apart alone give ~1e12). From such a start OpenMM's first L-BFGS steps throw atoms nanometres away,
# breaking the X-H constraints, and the constrained minimiser then crawls for minutes.
_ENERGY_FOR_PREPASS = 1e10
_PREPASS_MAX_ITERATIONS = 500


def _cpu_context(system, threads: int):
    import openmm  # deferred: OpenMM loads only where a structure is relaxed

    # The integrator is never stepped; a Context needs one.
    integrator = openmm.VerletIntegrator(0.001)
    platform = openmm.Platform.getPlatformByName("CPU")
    return openmm.Context(system, integrator, platform, {"Threads": str(max(1, int(threads)))}), integrator


def _minimize_context(context, tolerance: float, max_iterations: int, deadline: float) -> int:
    import openmm  # deferred: OpenMM loads only where a structure is relaxed

    reporter = _deadline_reporter(deadline)
    openmm.LocalEnergyMinimizer.minimize(
        context, tolerance_in_openmm_units(tolerance), int(max_iterations), reporter
    )
    if reporter.timed_out:
        raise RelaxTimeout(f"the time limit ran out during minimisation (after {reporter.iterations} steps)")
    return reporter.iterations


def _system(structure: CleanStructure, stiffness: float, exclude_residues: Sequence[int], constrained: bool):
    from openmm import app  # deferred: OpenMM loads only where a structure is relaxed

    system = _force_field().createSystem(
        structure.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds if constrained else None
    )
    if stiffness > 0:
        system.addForce(
            _restraint_force(
                structure.topology,
                structure.positions,
                stiffness_in_openmm_units(stiffness),
                exclude_residues,
            )
        )
    return system


def minimize(
    structure: CleanStructure,
    *,
    stiffness: float,
    tolerance: float,
    max_iterations: int,
    exclude_residues: Sequence[int],
    threads: int,
    deadline: float,
    jitter: float = 0.0,
    seed: int = 0,
) -> Minimized:
    """Minimise amber99sb + heavy-atom restraints once; `stiffness` in kcal/mol/Å², `tolerance` in kcal/mol/Å.

    Restraints hold heavy atoms to ``structure.positions``. `jitter` (Å, Gaussian, from `seed`)
    moves the starting positions, not the restraint centres: a retry from the very same start would
    fail the same way on the CPU platform, which is deterministic.

    Raises RelaxTimeout when `deadline` (time.monotonic()) passes, MinimizationError when OpenMM
    fails or the result is not finite.
    """
    from openmm import unit  # deferred: OpenMM loads only where a structure is relaxed

    if time.monotonic() > deadline:
        raise RelaxTimeout("the time limit ran out before minimisation started")
    start = structure.positions / ANGSTROM_PER_NM
    system = _system(structure, stiffness, exclude_residues, constrained=True)
    context, integrator = _cpu_context(system, threads)
    try:
        context.setPositions(start)
        initial = (
            context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilocalories_per_mole)
        )
        if jitter > 0:
            rng = np.random.default_rng(seed)
            start = start + rng.normal(scale=jitter / ANGSTROM_PER_NM, size=start.shape)
        iterations = 0
        if not initial < _ENERGY_FOR_PREPASS:  # also when not finite
            # DISCREPANCY: AlphaFold2 minimises such a start as it is, which can take many minutes.
            # A short pass with X-H bonds as springs instead of constraints first pulls overlapping
            # atoms apart; starts without overlapping atoms never take this path.
            free = _system(structure, stiffness, exclude_residues, constrained=False)
            free_context, free_integrator = _cpu_context(free, threads)
            try:
                free_context.setPositions(start)
                iterations += _minimize_context(free_context, tolerance, _PREPASS_MAX_ITERATIONS, deadline)
                start = (
                    free_context.getState(getPositions=True)
                    .getPositions(asNumpy=True)
                    .value_in_unit(unit.nanometer)
                )
            finally:
                del free_context, free_integrator
        context.setPositions(start)
        iterations += _minimize_context(context, tolerance, max_iterations, deadline)
        state = context.getState(getEnergy=True, getPositions=True)
        final = state.getPotentialEnergy().value_in_unit(unit.kilocalories_per_mole)
        positions = np.array(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)
    finally:
        del context, integrator
    if not (np.isfinite(final) and np.all(np.isfinite(positions))):
        raise MinimizationError(f"minimisation gave a non-finite result (energy {final} kcal/mol)")
    return Minimized(
        initial_energy=float(initial), final_energy=float(final), positions=positions, iterations=iterations
    )
