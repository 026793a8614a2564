"""Configuration of Amber relaxation (the `relax` Hydra group: best | all | none)."""

from dataclasses import dataclass
from enum import Enum


class RelaxMode(str, Enum):
    best = "best"
    all = "all"
    none = "none"


@dataclass
class RelaxConfig:
    """AlphaFold2's relaxation protocol settings (defaults are AlphaFold2's)."""

    mode: RelaxMode = RelaxMode.best
    stiffness: float = 10.0  # kcal/mol/Å², harmonic restraints on heavy atoms
    # AlphaFold2's "energy tolerance 2.39 kcal/mol", which OpenMM reads as an RMS force of
    # 2.39 kcal/mol/Å (= 100 kJ/mol/nm); see af2cpu.relax.amber.
    tolerance: float = 2.39
    max_iterations: int = 0  # L-BFGS steps per minimisation; 0 = until converged
    max_outer_iterations: int = 3  # minimisation rounds while violations remain
    max_attempts: int = 100  # minimisation attempts per round before the relaxation fails
    timeout_s: float = 600.0  # wall-clock limit of one relaxation; then the unrelaxed structure is kept
    threads: int = 0  # OpenMM CPU threads; 0 = the allotment of the worker running it
