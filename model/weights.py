"""Which weights a run's models get: DeepMind's parameter files, or random ones for smoke runs.

``params=official`` reads ``<params_dir>/params_<model>.npz``; ``params=random`` makes untrained weights
in the official format, seeded per model as AlphaFold2 seeds its models. :func:`check_params` runs
before any work, so a missing file is reported at once instead of after the searches.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from af2cpu.config import Backend, Params
from af2cpu.errors import InputError
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import get_preset
from af2cpu.runtime.allocator import tune_allocator


def model_seed(cfg: Any, model_name: str) -> int:
    """AlphaFold2's per-model seed: model index + random_seed * number of models."""
    names = list(cfg.model.names)
    return names.index(model_name) + int(cfg.random_seed) * len(names)


def params_file(params_dir: str | Path, model_name: str) -> Path:
    """Where the official parameters of `model_name` are expected in `params_dir`."""
    return Path(str(params_dir)) / f"params_{model_name}.npz"


def missing_params(cfg: Any) -> list[Path]:
    """The official parameter files the configured models need and ``params_dir`` lacks."""
    if cfg.params == Params.random:
        return []
    return [path for path in (params_file(cfg.params_dir, name) for name in cfg.model.names) if not path.is_file()]


def download_hint(params_dir: str | Path) -> str:
    """What to do when official parameter files are missing."""
    return (
        f"get them with `af2cpu params download --dest {params_dir}` (about 5 GB), point params_dir= (or "
        "AF2CPU_PARAMS_DIR) at a folder that has them, or run params=random for an untrained smoke test"
    )


# An array only the pTM presets' parameter files hold (the predicted aligned error head).
_PTM_HEAD = "predicted_aligned_error_head"
# An array only the multimer's parameter files hold (its chain-relative position encoding).
_MULTIMER_RELPOS = "~_relative_encoding"


def check_params_file(path: Path, model_name: str) -> None:
    """A quick check of an official parameter file without loading it: readable, a whole zip archive
    (its directory, at the end of the file, is there and every array lies inside the file) of
    AlphaFold2 arrays, with the pTM head exactly when ``model_name`` is a pTM (or multimer) preset, and
    the multimer's arrays exactly when it is a multimer preset."""
    fix = download_hint(path.parent)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise InputError(f"parameter file {path} is unreadable, truncated or not an AlphaFold2 parameter "
                         f"file ({type(exc).__name__}); {fix}") from None
    names = [m.filename for m in members]
    if not names or not all(n.startswith("alphafold/") and n.endswith(".npy") for n in names):
        raise InputError(f"parameter file {path} does not hold AlphaFold2 parameters; {fix}")
    if any(m.header_offset + m.compress_size > size for m in members):
        raise InputError(f"parameter file {path} is truncated; {fix}")
    preset = get_preset(model_name)
    is_multimer = any(_MULTIMER_RELPOS in n for n in names)
    if is_multimer != preset.multimer:
        raise InputError(f"parameter file {path} holds {'an AlphaFold-Multimer' if is_multimer else 'a monomer'} "
                         f"model's parameters, not those of {model_name}; {fix}")
    has_ptm = any(_PTM_HEAD in n for n in names)
    if has_ptm != preset.predicted_aligned_error:
        raise InputError(f"parameter file {path} holds {'a pTM' if has_ptm else 'a non-pTM'} model's parameters, "
                         f"not those of {model_name}; {fix}")


def check_params(cfg: Any) -> None:
    """Fail before any work when a model name is unknown or official params are missing or damaged."""
    for name in cfg.model.names:
        get_preset(name)
    missing = missing_params(cfg)
    if missing:
        raise InputError(
            f"model parameters not found: {', '.join(str(p) for p in missing)}. {download_hint(cfg.params_dir)}"
        )
    if cfg.params != Params.random:
        for name in cfg.model.names:
            check_params_file(params_file(cfg.params_dir, name), name)


def params_identity(cfg: Any, model_name: str) -> dict:
    """What identifies a model's weights in a cache key: the file (path, size, time) or the random seed."""
    if cfg.params == Params.random:
        return {"random_seed": model_seed(cfg, model_name)}
    path = params_file(cfg.params_dir, model_name)
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_model(cfg: Any, model_name: str, options=None):
    """The network of `model_name` with official weights, or random ones when params=random."""
    from af2cpu.model.alphafold import AlphaFold  # deferred: torch, only in processes that run a model

    tune_allocator()
    if cfg.params == Params.random:
        model = AlphaFold(model_name, options)
        load_params(model, random_params(model, seed=model_seed(cfg, model_name)), source="random parameters")
        model.set_options(model.options)
        model = model.eval()
    else:
        model = AlphaFold.from_params(params_file(cfg.params_dir, model_name), model_name, options)
    return apply_backend(model, cfg.runtime.backend)


def apply_backend(model, backend: Backend | str):
    """``model`` set up for ``runtime.backend``, in place: for ipex its linear layers run through Intel
    Extension for PyTorch (af2cpu.model.ipex_backend; ConfigError when it is missing), for native (the
    default) through PyTorch's own GEMMs, also after an earlier ipex."""
    from af2cpu.model.ipex_backend import set_ipex  # deferred: torch, only in processes that run a model

    return set_ipex(model, Backend(backend) == Backend.ipex)
