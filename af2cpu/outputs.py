"""The files of a target's output folder, written as AlphaFold2 writes them, plus af2cpu's own.

Every writer here replaces its file atomically: the bytes go to a temporary name in the same folder
and are renamed over the final name, so a killed run leaves either the old file or the new one, never
half of one. Nothing here needs pickle to be read back: model results and features are ``.npz`` files
whose arrays load with ``np.load(..., allow_pickle=False)``.

Formats that other tools read are kept exactly:

- ``confidence_<model>.json`` and ``pae_<model>.json``: the AlphaFold Database format, as DeepMind's
  ``alphafold.common.confidence.confidence_json``/``pae_json`` write them (pLDDT to 2 decimals, PAE to
  1 decimal, compact separators).
- ``ranking_debug.json``: ``{"plddts": {model: mean pLDDT}, "order": [...]}`` for monomers (the
  ``_ptm`` presets too: AlphaFold2 ranks monomers by pLDDT, not pTM),
  ``{"iptm+ptm": {...}, "order": [...]}`` for multimers, with ``indent=4`` as ``run_alphafold.py``.
- ``ranked_<i>.pdb``/``.cif``: ``i`` is the 0-based rank, best first.

af2cpu's own: ``result_<model>.npz`` (the ``.pkl`` of AlphaFold2 as a flat npz), ``features.npz``,
``timings.json`` with start/end times per stage, and the batch ``summary.json``/``summary.tsv``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from af2cpu.common.protein import Protein
from af2cpu.errors import InputError

# pLDDT bands of the AlphaFold Database: (lower bound, category letter, name, colour).
PLDDT_BANDS = (
    (90.0, "H", "Very high (pLDDT \u2265 90)", "#0053D6"),
    (70.0, "M", "Confident (90 > pLDDT \u2265 70)", "#65CBF3"),
    (50.0, "L", "Low (70 > pLDDT \u2265 50)", "#FFDB13"),
    (0.0, "D", "Very low (pLDDT < 50)", "#FF7D45"),
)

SUMMARY_STATUSES = ("done", "failed", "pending")

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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------
# result_<model>.npz: the model's nested output dict as a flat npz


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


def load_result_npz(path: str | os.PathLike, prefixes: Iterable[str] | None = None) -> dict[str, Any]:
    """Load a ``result_<model>.npz`` back into the nested dict; without pickle.

    ``prefixes`` (e.g. ``["plddt", "ptm"]``) loads only those top-level entries (or ``"a/b"`` paths):
    arrays are read from disk only when asked for, so the pLDDT of a result with a large pair
    representation loads in milliseconds.
    """
    wanted = None if prefixes is None else tuple(prefixes)
    with np.load(path, allow_pickle=False) as npz:
        keys = [
            k
            for k in npz.files
            if wanted is None or any(k == p or k.startswith(p + _KEY_SEPARATOR) for p in wanted)
        ]
        return unflatten_tree({k: npz[k] for k in keys})


# ---------------------------------------------------------------------------------------------
# AlphaFold DB JSON


def confidence_category(score: float) -> str:
    """AlphaFold DB pLDDT category: 'D' very low (<50), 'L' low, 'M' confident, 'H' very high (>=90)."""
    if not 0.0 <= score <= 100.0:
        raise ValueError(f"pLDDT must be within [0, 100], got {score}")
    return next(letter for bound, letter, _, _ in PLDDT_BANDS if score >= bound)


def confidence_json(plddt: np.ndarray) -> str:
    """Per-residue pLDDT in the AlphaFold DB ``confidence`` format (residueNumber is 1-based)."""
    plddt = np.asarray(plddt)
    if plddt.ndim != 1:
        raise ValueError(f"pLDDT must be one value per residue (rank 1), got shape {plddt.shape}")
    scores = [float(s) for s in plddt]
    confidence = {
        "residueNumber": list(range(1, len(scores) + 1)),
        "confidenceScore": [round(s, 2) for s in scores],
        "confidenceCategory": [confidence_category(s) for s in scores],
    }
    return json.dumps(confidence, indent=None, separators=(",", ":"))


def pae_json(pae: np.ndarray, max_pae: float) -> str:
    """Predicted aligned error in the AlphaFold DB format, rounded to 1 decimal as AlphaFold2 does."""
    pae = np.asarray(pae)
    if pae.ndim != 2 or pae.shape[0] != pae.shape[1]:
        raise ValueError(f"PAE must be a square matrix, got shape {pae.shape}")
    payload = [
        {
            "predicted_aligned_error": np.round(pae.astype(np.float64), decimals=1).tolist(),
            "max_predicted_aligned_error": float(max_pae),
        }
    ]
    return json.dumps(payload, indent=None, separators=(",", ":"))


def write_model_outputs(target_dir: str | os.PathLike, model_name: str, out: Mapping[str, Any]) -> None:
    """Write ``result_<model>.npz``, ``confidence_<model>.json`` and, when the model predicts PAE,
    ``pae_<model>.json``.

    Everything in ``out`` is saved: leave out ``representations`` and per-recycle outputs before
    calling unless the user asked to keep them.
    """
    target_dir = Path(target_dir)
    save_result_npz(target_dir / f"result_{model_name}.npz", out)
    atomic_write_text(target_dir / f"confidence_{model_name}.json", confidence_json(out["plddt"]))
    if out.get("predicted_aligned_error") is not None:
        atomic_write_text(
            target_dir / f"pae_{model_name}.json",
            pae_json(out["predicted_aligned_error"], out["max_predicted_aligned_error"]),
        )


def protein_from_prediction(features: Mapping[str, Any], out: Mapping[str, Any]) -> Protein:
    """The predicted structure of ``out`` as a Protein, pLDDT on every atom's B-factor.

    ``features`` are raw or processed: ``aatype`` one-hot (L, 21) or indices (L,); ``residue_index``
    0-based as AlphaFold2's features hold it (written 1-based, as AlphaFold2 writes it); ``asym_id``
    (1-based, multimer) gives the chains when present.
    """
    aatype = np.asarray(features["aatype"])
    if aatype.ndim == 2:
        aatype = aatype.argmax(axis=-1)
    structure = out["structure_module"]
    positions = np.asarray(structure["final_atom_positions"])
    plddt = np.asarray(out["plddt"], dtype=np.float64)
    chain_index = np.asarray(features["asym_id"]) - 1 if "asym_id" in features else np.zeros_like(aatype)
    return Protein(
        atom_positions=positions,
        aatype=aatype.astype(np.int32),
        atom_mask=np.asarray(structure["final_atom_mask"]),
        residue_index=np.asarray(features["residue_index"]).astype(np.int32) + 1,
        chain_index=chain_index.astype(np.int32),
        b_factors=np.repeat(plddt[:, None], positions.shape[1], axis=1),
    )


# ---------------------------------------------------------------------------------------------
# Ranking


def rank_models(confidences: Mapping[str, float]) -> list[str]:
    """Model names, most confident first; ties keep the given order (as AlphaFold2's sorted()).

    ``confidences`` are each model's ``out["ranking_confidence"]`` (af2cpu.model.confidence), as
    in AlphaFold 2.3: the mean pLDDT for monomers, ``_ptm`` presets included (their pTM is reported
    beside it, in ``ranking_debug.json`` "ptms" and the batch summary, but does not decide the
    order), and 0.8 ipTM + 0.2 pTM for multimers.
    """
    return [name for name, _ in sorted(confidences.items(), key=lambda item: item[1], reverse=True)]


def ranking_debug_json(
    confidences: Mapping[str, float],
    *,
    multimer: bool = False,
    ptms: Mapping[str, float] | None = None,
    untrained_params: bool = False,
) -> str:
    """``ranking_debug.json`` as AlphaFold2 writes it, plus af2cpu's optional fields.

    ``{"plddts": {...}, "order": [...]}`` (``"iptm+ptm"`` for multimers). ``ptms`` adds the pTM of
    ``_ptm`` monomer presets under ``"ptms"`` (information only: the order is by pLDDT).
    ``untrained_params`` adds ``"untrained_params": true`` so that a run with ``params=random`` can
    never be mistaken for a prediction.
    """
    label = "iptm+ptm" if multimer else "plddts"
    payload: dict[str, Any] = {
        label: {name: float(value) for name, value in confidences.items()},
        "order": rank_models(confidences),
    }
    if ptms:
        payload["ptms"] = {name: float(value) for name, value in ptms.items()}
    if untrained_params:
        payload["untrained_params"] = True
    return json.dumps(payload, indent=4)


def ranked_file_names(order: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(model_name, "ranked_<i>.pdb", "ranked_<i>.cif")`` for each model, best (i = 0) first."""
    return [(name, f"ranked_{i}.pdb", f"ranked_{i}.cif") for i, name in enumerate(order)]


def write_ranked_structures(
    target_dir: str | os.PathLike,
    order: Sequence[str],
    pdb_strings: Mapping[str, str],
    cif_strings: Mapping[str, str] | None = None,
) -> None:
    """Write ``ranked_<i>.pdb`` (and ``.cif``) from each model's best structure (relaxed if any)."""
    target_dir = Path(target_dir)
    for name, pdb_name, cif_name in ranked_file_names(order):
        atomic_write_text(target_dir / pdb_name, pdb_strings[name])
        if cif_strings is not None:
            atomic_write_text(target_dir / cif_name, cif_strings[name])


# ---------------------------------------------------------------------------------------------
# timings.json


@contextlib.contextmanager
def timed(stages: MutableMapping[str, tuple[float, float]], name: str) -> Iterator[None]:
    """Record ``(start, end)`` epoch seconds of the ``with`` body in ``stages[name]``, also on error."""
    start = time.time()
    try:
        yield
    finally:
        stages[name] = (start, time.time())


def timings_json(stages: Mapping[str, tuple[float, float]]) -> str:
    """``{stage: {"start", "end", "duration"}}`` in epoch seconds, in order of start time.

    Unlike AlphaFold2's ``{stage: seconds}``, start and end are kept so that overlap of stages run
    in parallel (the three MSA searches) can be seen.
    """
    payload = {
        name: {"start": round(start, 3), "end": round(end, 3), "duration": round(end - start, 3)}
        for name, (start, end) in sorted(stages.items(), key=lambda item: item[1][0])
    }
    return json.dumps(payload, indent=4)


def load_timings(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """``{stage: (start, end)}`` from a ``timings.json``, e.g. to add a resumed run's stages."""
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    return {name: (float(entry["start"]), float(entry["end"])) for name, entry in payload.items()}


# ---------------------------------------------------------------------------------------------
# features.npz (raw features), features.pkl on request


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


def load_features_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``features.npz`` written by :func:`save_features_npz`, without pickle."""
    with np.load(path, allow_pickle=False) as npz:
        features = {name: npz[name] for name in npz.files}
    object_names = features.pop(_OBJECT_FEATURES_KEY, np.array([], dtype=np.str_))
    for name in object_names.tolist():
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


# ---------------------------------------------------------------------------------------------
# Batch summary at the top of --out


@dataclasses.dataclass(frozen=True)
class TargetSummary:
    """One line of the batch summary: how a target ended and, when done, its best model."""

    target_id: str
    status: str
    length: int | None = None
    best_model: str | None = None
    mean_plddt: float | None = None
    ptm: float | None = None
    iptm: float | None = None
    failure_reason: str | None = None
    untrained_params: bool = False

    def __post_init__(self) -> None:
        if self.status not in SUMMARY_STATUSES:
            raise ValueError(f"target status must be one of {SUMMARY_STATUSES}, got {self.status!r}")
        if self.status == "failed" and not self.failure_reason:
            raise ValueError(f"target {self.target_id!r} failed: a failure_reason is required")


_SUMMARY_FIELDS = tuple(field.name for field in dataclasses.fields(TargetSummary))


def _tsv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    # One record per line, no tab inside a cell: whitespace runs of a failure reason become one space
    # (summary.json keeps the reason as it was).
    return " ".join(str(value).split())


def write_batch_summary(out_dir: str | os.PathLike, targets: Sequence[TargetSummary]) -> None:
    """Write ``summary.json`` and ``summary.tsv`` at the top of ``--out``, atomically.

    ``summary.json`` is ``{"counts": {status: n}, "targets": [{field: value}]}``; the TSV has the
    same fields as columns, one target per row, empty cells for absent values.
    """
    out_dir = Path(out_dir)
    counts = {status: sum(t.status == status for t in targets) for status in SUMMARY_STATUSES}
    payload = {"counts": counts, "targets": [dataclasses.asdict(t) for t in targets]}
    atomic_write_text(out_dir / "summary.json", json.dumps(payload, indent=2) + "\n")
    rows = [_SUMMARY_FIELDS] + [[_tsv_cell(getattr(t, field)) for field in _SUMMARY_FIELDS] for t in targets]
    atomic_write_text(out_dir / "summary.tsv", "".join("\t".join(row) + "\n" for row in rows))


def read_batch_summary(out_dir: str | os.PathLike) -> list[TargetSummary]:
    """The targets of ``<out_dir>/summary.json``."""
    path = Path(out_dir) / "summary.json"
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    return [TargetSummary(**entry) for entry in payload["targets"]]
