"""The official parameter files: load, export, random stand-ins, safetensors cache, download.

Keys of an official ``params_model_*.npz`` are ``"<haiku scope>//<name>"``. Because every module of
``af2cpu.model`` mirrors those scopes in its attribute path (see :mod:`af2cpu.model.primitives`),
the mapping is mechanical: attribute names joined by ``/``, ``nn.ModuleList`` indices folded into
the leading layer axis of a stacked tensor, and modules marked ``haiku_transparent = True`` (like
``hk.transparent``) left out of the scope. Loading checks that every key is used and every parameter
filled; anything else is an error that lists the offending keys.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load_file, save

from af2cpu.errors import Af2CpuError, InputError
from af2cpu.io import atomic_open, atomic_write_bytes
from af2cpu.model.presets import PRESETS, Preset, families

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI starts fast
    from torch import nn

PARAMS_URL = "https://storage.googleapis.com/alphafold/alphafold_params_2022-12-06.tar"
PARAMS_TAR_NAME = "alphafold_params_2022-12-06.tar"
_MAX_LISTED = 12


def _scope_map(module: nn.Module, root: str) -> dict[str, list[tuple[str, int | None]]]:
    """Official key -> [(torch parameter name, layer index or None)], in layer order."""
    transparent = {name for name, m in module.named_modules() if getattr(m, "haiku_transparent", False)}
    keys: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for name, _ in module.named_parameters():
        parts = name.split(".")
        scope, layer = [root] if root else [], None
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                if layer is not None:
                    raise Af2CpuError(f"parameter {name} is stacked twice; the official format stacks once")
                layer = int(part)
            elif ".".join(parts[: i + 1]) not in transparent:
                scope.append(part)
        keys["/".join(scope) + "//" + parts[-1]].append((name, layer))
    for entries in keys.values():
        entries.sort(key=lambda e: -1 if e[1] is None else e[1])
    return dict(keys)


def official_shapes(module: nn.Module, root: str = "alphafold") -> dict[str, tuple[tuple[int, ...], bool]]:
    """Official key -> (shape, stacked) for every tensor the module holds."""
    params = dict(module.named_parameters())
    out = {}
    for key, entries in _scope_map(module, root).items():
        shape = tuple(params[entries[0][0]].shape)
        stacked = entries[0][1] is not None
        out[key] = ((len(entries), *shape) if stacked else shape, stacked)
    return out


def export_params(module: nn.Module, root: str = "alphafold") -> dict[str, np.ndarray]:
    """The module's parameters as an official flat dict (float32 numpy arrays)."""
    params = dict(module.named_parameters())
    out = {}
    for key, entries in _scope_map(module, root).items():
        arrays = [params[name].detach().float().cpu().numpy() for name, _ in entries]
        out[key] = np.stack(arrays) if entries[0][1] is not None else arrays[0]
    return out


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_params(module: nn.Module, flat: dict[str, np.ndarray], root: str = "alphafold",
                source: str = "parameters") -> None:
    """Fill every parameter of ``module`` from the official flat dict ``flat``.

    Raises InputError naming the missing, unexpected and mis-shaped keys (all of them at once).
    Parameters on the meta device are materialised on the CPU.
    """
    import torch  # deferred: this module is imported by the CLI, which starts without torch

    scopes = _scope_map(module, root)
    expected = official_shapes(module, root)
    missing = set(scopes) - set(flat)
    unexpected = set(flat) - set(scopes)
    misshaped = [f"{k} {tuple(flat[k].shape)} (expected {expected[k][0]})"
                 for k in sorted(set(scopes) & set(flat)) if tuple(flat[k].shape) != expected[k][0]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped key(s): {_listing(misshaped)}")
    if problems:
        raise InputError(f"{source} does not fit the model: " + "; ".join(problems))
    state = {}
    for key, entries in scopes.items():
        value = torch.from_numpy(np.ascontiguousarray(flat[key], dtype=np.float32))
        for name, layer in entries:
            # A stacked tensor's layers are contiguous views of it (no copy: a copy of every stacked
            # parameter held twice the weights while loading).
            state[name] = value if layer is None else value[layer]
    module.load_state_dict(state, strict=True, assign=True)


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an official ``.npz`` (never unpickling) or a ``.safetensors`` cache of one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"parameter file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"parameter file {path} cannot be read ({type(exc).__name__}: {exc}); it is truncated or not "
            "an AlphaFold2 parameter file — download it again (af2cpu params download)"
        ) from exc


def write_npz(path: str | os.PathLike, flat: dict[str, np.ndarray]) -> None:
    """Write an official-format ``.npz`` atomically."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **flat)


def write_safetensors(path: str | os.PathLike, flat: dict[str, np.ndarray]) -> None:
    """Write a safetensors copy of official parameters (same keys) atomically."""
    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in flat.items()}))


# Layers that AlphaFold2 initialises to zero (the last layer of each residual update, and the
# backbone update). Random stand-ins scale them down so that 48 blocks x 4 passes stay in a sane
# range and a random structure stays protein-sized (tens of Å, not hundreds).
_FINAL_LAYERS = ("output_w", "transition2", "output_projection", "affine_update")
_FINAL_GAIN = 0.2
# The multimer's backbone update (``quat_rigid/rigid``) moves residues position_scale (20 Å) per unit:
# fan-in scaled, random structures spread over ~90 Å radius of gyration; scaled down they stay ~13 Å.
_MULTIMER_BACKBONE_UPDATE = "quat_rigid/rigid"
_MULTIMER_BACKBONE_GAIN = 0.15


def random_params(module: nn.Module, seed: int = 0, root: str = "alphafold") -> dict[str, np.ndarray]:
    """Random parameters in the official format, scaled like the initialisers (fan-in).

    Weights ~ N(0, gain^2 / fan_in), with fan-in the input axes (all but the last for ``output_w``,
    the first otherwise); layer-norm scales ~ 1, offsets and biases small, gate biases ~ 1.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, stacked) in sorted(official_shapes(module, root).items()):
        scope, name = key.split("//")
        layer_shape = shape[1:] if stacked else shape
        if name == "scale":
            value = 1.0 + 0.05 * rng.standard_normal(shape)
        elif name in ("offset", "bias", "output_b"):
            value = 0.05 * rng.standard_normal(shape)
        elif name == "gating_b":
            value = 1.0 + 0.05 * rng.standard_normal(shape)
        elif name == "trainable_point_weights":
            value = np.log(np.e - 1.0) + 0.05 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(layer_shape[:-1])) if name == "output_w" else layer_shape[0]
            final = name in _FINAL_LAYERS or scope.rsplit("/", 1)[-1] in _FINAL_LAYERS
            gain = _FINAL_GAIN if final else 1.0
            if scope.endswith(_MULTIMER_BACKBONE_UPDATE):
                gain = _MULTIMER_BACKBONE_GAIN
            value = gain * fan_in**-0.5 * rng.standard_normal(shape)
        out[key] = value.astype(np.float32)
    return out


def preset_from_filename(path: str | os.PathLike) -> str | None:
    """``params_model_3_ptm.npz`` -> ``model_3_ptm``, ``params_model_1_multimer_v3.npz`` ->
    ``model_1_multimer_v3``, ``params_model_2_multimer.npz`` -> ``model_2_multimer`` (v1); None when
    the name does not tell."""
    names = "|".join(sorted(PRESETS, key=len, reverse=True))  # the longest first: _multimer_v2 before _multimer
    match = re.search(rf"({names})(?!\w)", Path(path).stem)
    return match.group(1) if match else None


# A tensor that only files with fused triangle-multiplication projections hold (AlphaFold-Multimer
# v3's); the monomer's and multimer v1's and v2's hold left_projection and right_projection instead.
_FUSED_TRIANGLE_KEY = "/triangle_multiplication_outgoing/projection//"


def triangle_layout_error(path: str | os.PathLike, names: Iterable[str], preset: Preset) -> str | None:
    """Why the parameter file ``path`` (its tensor ``names``) cannot be ``preset``'s: its triangle
    multiplications are fused and the preset's not, or the reverse; None when they agree."""
    fused = any(_FUSED_TRIANGLE_KEY in n for n in names)
    if fused == preset.architecture.evoformer.fuse_projection_weights:
        return None
    readers = [p.name for p in PRESETS.values()
               if p.multimer == preset.multimer and p.architecture.evoformer.fuse_projection_weights == fused]

    def layout(is_fused: bool, of: list[str]) -> str:
        return f"{'fused' if is_fused else 'unfused'} triangle-multiplication weights" + (
            f" (the layout of {families(of)})" if of else "")
    return (f"parameter file {os.fspath(path)} holds {layout(fused, readers)}, but preset {preset.name} reads "
            f"{'fused' if not fused else 'unfused'} ones; use the file with its own preset, or give {preset.name} "
            f"its own file (params_{preset.name}.npz)")


def download_params(dest: str | os.PathLike, url: str = PARAMS_URL, *, expected_size: int | None = None,
                    sha256: str | None = None, unpack: bool = True, chunk_bytes: int = 1 << 20,
                    timeout: float = 60.0) -> Path:
    """Download the parameter tarball into ``dest``, resuming a partial download, and unpack it.

    A partial file ``<name>.part`` is continued with an HTTP Range request; the finished file is
    checked against ``expected_size`` (else the server's length) and ``sha256`` when given, then
    renamed and, with ``unpack``, extracted into ``dest``. Returns the path of the tarball.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(url).path).name or PARAMS_TAR_NAME
    final, part = dest / name, dest / (name + ".part")
    if not final.exists():
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f:
                    while block := response.read(chunk_bytes):
                        f.write(block)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the partial file is already complete
                total = have
            else:
                raise Af2CpuError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise Af2CpuError(
                f"downloading {url} failed ({exc}); run the command again to resume from "
                f"{part.stat().st_size if part.exists() else 0} bytes"
            ) from exc
        size = part.stat().st_size
        want = expected_size if expected_size is not None else total
        if want is not None and size != want:
            raise Af2CpuError(f"download of {url} is incomplete: {size} of {want} bytes in {part}; "
                              "run the command again to resume")
        if sha256 is not None:
            digest = _sha256(part)
            if digest != sha256.lower():
                part.unlink()
                raise Af2CpuError(f"{url} has sha256 {digest}, expected {sha256}; the partial file was "
                                  "removed, run the command again")
        part.replace(final)
    elif sha256 is not None and _sha256(final) != sha256.lower():
        raise Af2CpuError(f"{final} does not match sha256 {sha256}; delete it and download again")
    if unpack:
        try:
            with tarfile.open(final) as tar:
                tar.extractall(dest, filter="data")
        except tarfile.TarError as exc:
            raise Af2CpuError(f"{final} is not a readable tar file ({exc}); delete it and download again") from exc
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
