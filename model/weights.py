"""Which weights a run's models get: DeepMind's parameter files, or random ones for smoke runs.

``params=official`` reads ``<params_dir>/params_<model>.npz``; ``params=random`` makes untrained weights
in the official format, seeded per model as AlphaFold2 seeds its models. :func:`check_params` runs
before any work, so a missing file is reported at once instead of after the searches.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from af2cpu.config import Backend, ModelKind, Params
from af2cpu.errors import ConfigError, InputError
from af2cpu.model.params import load_params, random_params, triangle_layout_error
from af2cpu.model.presets import get_preset, preset_families
from af2cpu.runtime.allocator import tune_allocator


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One prediction of a target: a preset's network run once with its own seed (AlphaFold2's
    ``model_random_seed``), named in the outputs as AlphaFold2 names it: ``model_1_ptm`` for a monomer
    preset (one prediction each), ``model_1_multimer_v3_pred_0`` ... for a multimer preset."""

    name: str
    preset: str
    prediction: int
    seed: int

    @property
    def multimer(self) -> bool:
        return get_preset(self.preset).multimer


def folds_as_multimer(cfg: Any, is_complex: bool) -> bool:
    """Whether a target is folded by AlphaFold-Multimer: a complex always (``model.kind=monomer`` refuses
    it), a single chain only with ``model.kind=multimer``."""
    return is_complex or cfg.model.kind == ModelKind.multimer


def preset_names(cfg: Any, multimer: bool) -> list[str]:
    """The presets that fold a monomer (``model.names``) or a multimer (``model.multimer_names``), each
    checked to be of its kind; ConfigError for an unknown name, a preset of the other kind, a complex
    with ``model.kind=monomer`` or an empty list."""
    key = "multimer_names" if multimer else "names"
    if multimer and cfg.model.kind == ModelKind.monomer:
        raise ConfigError(f"model.kind=monomer ({', '.join(cfg.model.names)}) folds single chains only; a complex "
                          "needs AlphaFold-Multimer: use model=auto (the default) or model=multimer")
    names = list(cfg.model[key])
    if not names:
        raise ConfigError(f"model.{key} is empty: name at least one model preset")
    for name in names:
        if get_preset(name).multimer != multimer:
            what = "a multimer" if multimer else "a monomer"
            raise ConfigError(
                f"model.{key} lists {name}, which is not {what} preset; model.names holds the monomer presets "
                f"({preset_families(False)}) and model.multimer_names the multimer ones ({preset_families(True)})")
    return names


def model_runs(cfg: Any, multimer: bool) -> list[ModelRun]:
    """Every prediction of a monomer (``multimer=False``) or multimer target, in AlphaFold2's order: by
    preset, then prediction. Seeds as run_alphafold: index + random_seed * number of predictions."""
    presets = preset_names(cfg, multimer)
    per_model = int(cfg.model.num_predictions_per_model) if multimer else 1
    if per_model < 1:
        raise ConfigError(f"model.num_predictions_per_model must be at least 1, not {per_model}")
    pairs = [(preset, k) for preset in presets for k in range(per_model)]
    return [ModelRun(f"{preset}_pred_{k}" if multimer else preset, preset, k, index + int(cfg.random_seed) * len(pairs))
            for index, (preset, k) in enumerate(pairs)]


def recycling(cfg: Any, preset_name: str) -> tuple[int, float]:
    """(recycles, early-stop tolerance in Å) of one preset: ``model.num_recycle`` and
    ``model.recycle_early_stop_tolerance`` where set, else the preset's own (AlphaFold2's: 3 and 0 for
    the monomer presets and AlphaFold-Multimer v1/v2, 20 and 0.5 Å for v3)."""
    preset = get_preset(preset_name)
    num_recycle, tolerance = cfg.model.num_recycle, cfg.model.recycle_early_stop_tolerance
    return (int(preset.num_recycle if num_recycle is None else num_recycle),
            float(preset.recycle_early_stop_tolerance if tolerance is None else tolerance))


def model_seed(cfg: Any, model_name: str) -> int:
    """The seed of a preset's random weights (params=random): AlphaFold2's per-model seed, preset index +
    random_seed * number of presets, among the presets of its kind. A monomer's runs use it too."""
    names = list(cfg.model.multimer_names if get_preset(model_name).multimer else cfg.model.names)
    return names.index(model_name) + int(cfg.random_seed) * len(names)


def params_file(params_dir: str | Path, model_name: str) -> Path:
    """Where the official parameters of `model_name` are expected in `params_dir`."""
    return Path(str(params_dir)) / f"params_{model_name}.npz"


def missing_params(cfg: Any, multimer: Iterable[bool] = (False,)) -> dict[str, Path]:
    """The presets of ``multimer`` kinds (default: the monomer presets) whose official parameter file
    ``params_dir`` lacks, each with that file."""
    if cfg.params == Params.random:
        return {}
    names = [name for kind in dict.fromkeys(multimer) for name in preset_names(cfg, kind)]
    return {name: path for name in names if not (path := params_file(cfg.params_dir, name)).is_file()}


def download_hint(params_dir: str | Path, names: Iterable[str] = ()) -> str:
    """What to do when official parameter files are missing; for the presets ``names`` whose files
    `af2cpu params download` does not fetch (AlphaFold-Multimer v1, v2), which file to put where."""
    hint = (
        f"get them with `af2cpu params download --dest {params_dir}` (about 5 GB), point params_dir= (or "
        "AF2CPU_PARAMS_DIR) at a folder that has them, or run params=random for an untrained smoke test"
    )
    for name in dict.fromkeys(names):
        release = get_preset(name).params_release
        if release:
            path = params_file(params_dir, name)
            hint += f"; {path.name} ({name}) is not in that download but in DeepMind's {release}: put it at {path}"
    return hint


# An array only the pTM presets' parameter files hold (the predicted aligned error head).
_PTM_HEAD = "predicted_aligned_error_head"
# An array only the multimer's parameter files hold (its chain-relative position encoding).
_MULTIMER_RELPOS = "~_relative_encoding"


def check_params_file(path: Path, model_name: str) -> None:
    """A quick check of an official parameter file without loading it: readable, a whole zip archive
    (its directory, at the end of the file, is there and every array lies inside the file) of
    AlphaFold2 arrays, with the pTM head exactly when ``model_name`` is a pTM (or multimer) preset, and
    the multimer's arrays exactly when it is a multimer preset."""
    fix = download_hint(path.parent, [model_name])
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
    layout = triangle_layout_error(path, names, preset)
    if layout:
        raise InputError(f"{layout}; {fix}")


def check_params(cfg: Any, multimer: Iterable[bool] = (False,)) -> None:
    """Fail before any work when a model name is unknown or of the wrong kind, or official params of the
    presets that fold the ``multimer`` kinds of targets (monomer, multimer or both) are missing or damaged."""
    kinds = list(dict.fromkeys(multimer))
    for kind in kinds:
        preset_names(cfg, kind)
    missing = missing_params(cfg, kinds)
    if missing:
        raise InputError(f"model parameters not found: {', '.join(str(p) for p in missing.values())}. "
                         f"{download_hint(cfg.params_dir, missing)}")
    if cfg.params != Params.random:
        for name in (n for kind in kinds for n in preset_names(cfg, kind)):
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

    if Backend(cfg.runtime.backend) == Backend.ipex:
        # deferred: torch, only in processes that run a model
        from af2cpu.model.ipex_backend import import_ipex

        import_ipex()  # a missing or mismatched IPEX is refused before the network is built
    tune_allocator()
    if cfg.params == Params.random:
        import torch  # deferred: as AlphaFold

        # Built on the meta device (no initial fill: 5 of the 9 s it took under OMP_NUM_THREADS=2);
        # loading the parameters allocates and fills each one, as from_params does.
        with torch.device("meta"):
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
