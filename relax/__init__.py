"""af2cpu.relax: Amber relaxation with OpenMM."""
