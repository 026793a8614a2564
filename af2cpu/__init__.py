"""af2cpu: AlphaFold2 protein structure prediction, fast on CPUs."""

__version__ = "0.1.0"
