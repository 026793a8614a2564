"""af2cpu.relax: AlphaFold2's Amber relaxation with OpenMM + pdbfixer, violation checks, retries.

``relax(protein_or_pdb_text, config, threads) -> (relaxed_pdb_text, RelaxReport)``; see
:mod:`af2cpu.relax.protocol`.
"""

from af2cpu.relax.config import RelaxConfig, RelaxMode
from af2cpu.relax.protocol import RelaxReport, relax, violation_summary
from af2cpu.relax.violations import Violations, find_violations

__all__ = [
    "RelaxConfig",
    "RelaxMode",
    "RelaxReport",
    "Violations",
    "find_violations",
    "relax",
    "violation_summary",
]
