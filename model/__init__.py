"""af2cpu.model: AlphaFold2 in PyTorch."""
