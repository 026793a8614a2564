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
    tolerance: float = 2.39  # kcal/mol, AlphaFold2's energy tolerance
    max_iterations: int = 0  # 0 = until converged
    max_outer_iterations: int = 3
    max_attempts: int = 100
    timeout_s: float = 600.0
    threads: int = 0  # 0 = the allotment of the worker running it
