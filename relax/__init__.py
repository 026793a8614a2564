"""af2cpu.relax: AlphaFold2's Amber relaxation with OpenMM 8 + pdbfixer, violation checks, retries.

Python API::

    from af2cpu.relax import relax, RelaxConfig
    pdb_text, report = relax(protein_or_pdb_text, RelaxConfig(), threads=1)

``pdb_text`` is the relaxed structure with hydrogens, the input's chain letters and residue numbers,
and each residue's input CA B-factor (pLDDT for predictions) on all of its atoms; if relaxation
fails it is the unrelaxed input instead. ``report`` is a :class:`RelaxReport` (``to_dict()`` for
JSON): ``relaxed``, ``failure``, ``initial_energy``/``final_energy`` (kcal/mol), ``rmsd`` (Å, input
heavy atoms), ``violations_before``/``violations_after`` (totals and per-residue bond/angle/clash
counts), ``attempts``, ``rounds``, ``excluded_residues``, ``added_heavy_atoms``,
``removed_heterogens``, ``chain_breaks``, ``threads``, ``seconds``. Input that cannot be relaxed
(non-protein or unknown residues, missing N/CA/C, empty) raises
:class:`af2cpu.errors.InputError` naming the residue. CLI: :mod:`af2cpu.cli.relax`.
"""

from af2cpu.config import RelaxConfig, RelaxMode
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
