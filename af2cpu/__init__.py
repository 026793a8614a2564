"""af2cpu: AlphaFold2 protein structure prediction, fast on CPUs."""

__version__ = "0.1.0"


def load_result(path):
    """Open a finished target folder (``<out>/<target id>``) for exploration: see af2cpu.results."""
    from af2cpu.results import load_result as _load_result

    return _load_result(path)


def predict(*args, **kwargs):
    """Predict structures from Python: see af2cpu.predict.predict."""
    from af2cpu.predict import predict as _predict

    return _predict(*args, **kwargs)
