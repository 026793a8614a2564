"""af2cpu.model: AlphaFold2 in PyTorch.

``af2cpu.model.AlphaFold`` is the model (see :mod:`af2cpu.model.alphafold`); it is imported on
first use so that importing the package (e.g. for its configs) stays free of torch.
"""


def __getattr__(name):
    if name == "AlphaFold":
        from af2cpu.model.alphafold import AlphaFold  # deferred: torch, see the module docstring

        return AlphaFold
    raise AttributeError(f"module 'af2cpu.model' has no attribute {name!r}")
