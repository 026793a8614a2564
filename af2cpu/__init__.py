"""af2cpu: AlphaFold2 protein structure prediction, fast on CPUs.

The Python API: :func:`predict` (a batch run, as `af2cpu predict`) and :func:`load_result` (a finished
target folder, for notebooks). Both import their machinery on first use, so that importing ``af2cpu``
(and its foundation modules, e.g. ``af2cpu.config``) stays fast.
"""

__version__ = "0.1.0"


def load_result(path):
    """Open a finished target folder (``<out>/<target id>``) for exploration: see af2cpu.results."""
    from af2cpu.results import load_result as _load_result  # deferred: start-up time (matplotlib)

    return _load_result(path)


def predict(*args, **kwargs):
    """Predict structures from Python, as `af2cpu predict`: see af2cpu.scheduler.batch.run_batch.

    ``af2cpu.predict("seq.fasta", out="out", overrides=["relax=none"])`` returns a BatchResult.
    """
    from af2cpu.runtime.threads import prepare_process  # deferred: start-up time of `import af2cpu`

    prepare_process()  # threads and OpenMP's wait policy, as the CLI sets them (before torch, if not yet imported)
    from af2cpu.scheduler.batch import run_batch  # deferred: start-up time (Dask, torch)

    return run_batch(*args, **kwargs)
