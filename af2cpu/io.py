"""Reading and writing files safely: atomic writes, content hashes, and npz trees without pickle.

Every writer here replaces its file atomically: the bytes go to a temporary name in the same folder and
are renamed over the final name, so a killed run leaves either the old file or the new one, never half
of one. Nothing written here needs pickle to be read back: model results and features are ``.npz``
files whose arrays load with ``np.load(..., allow_pickle=False)``; ``features.pkl`` is written on
request for tools that read AlphaFold2's pickle, and never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from af2cpu.errors import InputError

_KEY_SEPARATOR = "/"
_LIST_ITEM_PREFIX = "#"
# Names (a 'U' array) of the features that were object arrays of bytes/str before saving.
_OBJECT_FEATURES_KEY = "__object_features__"


# ---------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, else vanishes.

    The temporary name starts with a dot and ends with ``.tmp`` so that listings of the folder, and
    readers looking for final names, never see it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist")
    # os.open with 0o666 lets the umask decide the final permissions, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself survives a crash only once the folder's entry is on disk too.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            data(f)


# ---------------------------------------------------------------------------------------------
# Content hashes


def canonical_json(value) -> bytes:
    """JSON with sorted keys and no whitespace: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Model results: a nested output dict as a flat npz


def _as_saveable_array(value: Any, key: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(
            f"cannot save {key!r}: it is an object array ({type(value).__name__}); only numeric, bool, "
            f"bytes and str arrays load without pickle"
        )
    return array


def flatten_tree(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten nested dicts/lists of arrays to ``{"a/b/c": array}``; list items become ``"a/#0"``.

    ``None`` values are left out (the model reports absent optional outputs that way).
    """
    flat: dict[str, np.ndarray] = {}
    _flatten_into(flat, "", tree)
    return flat


def _flatten_into(flat: dict[str, np.ndarray], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            name = str(name)
            if not name or _KEY_SEPARATOR in name or name.startswith(_LIST_ITEM_PREFIX):
                raise ValueError(
                    f"cannot save key {key + name!r}: keys must be non-empty, without "
                    f"{_KEY_SEPARATOR!r} and not start with {_LIST_ITEM_PREFIX!r}"
                )
            _flatten_into(flat, key + name + _KEY_SEPARATOR, item)
    elif isinstance(value, (list, tuple)) and not _is_flat_scalar_list(value):
        for i, item in enumerate(value):
            _flatten_into(flat, f"{key}{_LIST_ITEM_PREFIX}{i}{_KEY_SEPARATOR}", item)
    else:
        flat[key.removesuffix(_KEY_SEPARATOR)] = _as_saveable_array(value, key.removesuffix(_KEY_SEPARATOR))


def _is_flat_scalar_list(value: Sequence[Any]) -> bool:
    # [1.0, 2.0] is an array; [array, array] (per-recycle outputs) is a list of items.
    return len(value) > 0 and all(isinstance(v, (int, float, bool, np.generic, str, bytes)) for v in value)


def unflatten_tree(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten_tree`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(_KEY_SEPARATOR)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _lists_from_item_dicts(tree)


def _lists_from_item_dicts(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _lists_from_item_dicts(v) for k, v in node.items()}
    if node and all(k.startswith(_LIST_ITEM_PREFIX) for k in node):
        return [node[f"{_LIST_ITEM_PREFIX}{i}"] for i in range(len(node))]
    return node


def save_result_npz(path: str | os.PathLike, out: Mapping[str, Any]) -> None:
    """Save a model's output dict (nested dicts/lists of arrays) as an uncompressed npz, atomically.

    Uncompressed because the pair representation of a long target is large and compressing it costs
    more CPU time than the disk it saves; keys are the ``"a/b/c"`` paths of :func:`flatten_tree`.
    """
    flat = flatten_tree(out)
    with atomic_open(path, "wb") as f:
        np.savez(f, **flat)


# What np.load and reading an array of a damaged file raise.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile)


def npz_error(path: str | os.PathLike, exc: BaseException, what: str = "an npz file af2cpu wrote") -> InputError:
    """The error for an npz file that cannot be read: names the file, never suggests unpickling it."""
    if isinstance(exc, FileNotFoundError):
        reason = "it does not exist"
    elif "pickle" in str(exc).lower():  # numpy takes any file that is not a zip archive for a pickle
        reason = f"it is truncated or not {what} (not a zip archive; af2cpu never unpickles files)"
    else:
        reason = f"it is truncated or not {what} ({type(exc).__name__})"
    return InputError(f"cannot read {path}: {reason}; delete it and run again to recompute it")


def npz_members(path: str | os.PathLike) -> list[str]:
    """The array names of an npz file (reads only its zip directory); InputError naming a damaged file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return list(npz.files)
    except _NPZ_ERRORS as exc:
        raise npz_error(path, exc) from None


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The shape of every array of an npz file, from the arrays' headers: no array is read (a compressed
    member is inflated only as far as its header). InputError naming a damaged file."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in readers:
                        raise ValueError(f"npy format version {version} of {info.filename}")
                    shapes[info.filename.removesuffix(".npy")] = tuple(readers[version](member)[0])
    except _NPZ_ERRORS as exc:
        raise npz_error(path, exc) from None
    return shapes


def load_result_npz(path: str | os.PathLike, prefixes: Iterable[str] | None = None) -> dict[str, Any]:
    """Load a ``result_<model>.npz`` back into the nested dict; without pickle.

    ``prefixes`` (e.g. ``["plddt", "ptm"]``) loads only those top-level entries (or ``"a/b"`` paths):
    arrays are read from disk only when asked for, so the pLDDT of a result with a large pair
    representation loads in milliseconds.
    """
    wanted = None if prefixes is None else tuple(prefixes)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [
                k
                for k in npz.files
                if wanted is None or any(k == p or k.startswith(p + _KEY_SEPARATOR) for p in wanted)
            ]
            return unflatten_tree({k: npz[k] for k in keys})
    except _NPZ_ERRORS as exc:
        raise npz_error(path, exc, "a model result") from None


# ---------------------------------------------------------------------------------------------
# Raw features: features.npz, and features.pkl on request


def _feature_to_saveable(name: str, value: Any) -> tuple[np.ndarray, bool]:
    """The array to store and whether it was an object array of bytes/str (AlphaFold2's strings)."""
    array = np.asarray(value)
    if array.dtype != object:
        return array, False
    items = array.ravel().tolist()
    if all(isinstance(item, bytes) for item in items):
        # 'S' drops trailing NUL bytes; AlphaFold2's feature strings never end with one.
        return np.array(items, dtype=np.bytes_).reshape(array.shape), True
    if all(isinstance(item, str) for item in items):
        return np.array(items, dtype=np.str_).reshape(array.shape), True
    kinds = sorted({type(item).__name__ for item in items})
    raise InputError(
        f"feature {name!r} is an object array of {', '.join(kinds)}; only numeric arrays and arrays of "
        f"bytes or str can be saved to features.npz"
    )


def save_features_npz(path: str | os.PathLike, features: Mapping[str, Any]) -> None:
    """Save a flat features dict as a compressed npz that loads without pickle, atomically.

    Object arrays of bytes or str (``sequence``, ``domain_name``, ``template_domain_names``...) are
    stored as fixed-width ``S``/``U`` arrays and become object arrays again in
    :func:`load_features_npz`, so the dict round-trips to what AlphaFold2's data pipeline made.
    """
    arrays: dict[str, np.ndarray] = {}
    object_names: list[str] = []
    for name, value in features.items():
        if name == _OBJECT_FEATURES_KEY:
            raise InputError(f"{name!r} is reserved in features.npz")
        arrays[name], was_object = _feature_to_saveable(name, value)
        if was_object:
            object_names.append(name)
    arrays[_OBJECT_FEATURES_KEY] = np.array(object_names, dtype=np.str_)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_features_npz(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Load a ``features.npz`` written by :func:`save_features_npz` (only the features ``names`` that it
    holds, if given), without pickle; a damaged file is an InputError naming it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            wanted = set(npz.files if names is None else names) | {_OBJECT_FEATURES_KEY}
            features = {name: npz[name] for name in npz.files if name in wanted}
    except _NPZ_ERRORS as exc:
        raise npz_error(path, exc, "a features file") from None
    object_names = features.pop(_OBJECT_FEATURES_KEY, np.array([], dtype=np.str_))
    for name in [n for n in object_names.tolist() if n in features]:
        stored = features[name]
        restored = np.empty(stored.shape, dtype=object)
        restored.ravel()[:] = stored.ravel().tolist()
        features[name] = restored
    return features


def save_features_pkl(path: str | os.PathLike, features: Mapping[str, Any]) -> None:
    """Write ``features.pkl`` as AlphaFold2 does, for old tools that read it; af2cpu never reads it."""
    buffer = io.BytesIO()
    pickle.dump(dict(features), buffer, protocol=4)
    atomic_write_bytes(path, buffer.getvalue())
