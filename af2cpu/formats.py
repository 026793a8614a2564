"""AlphaFold2's output formats, and af2cpu's additions, as other tools read them.

Formats kept exactly:

- ``confidence_<model>.json`` and ``pae_<model>.json``: the AlphaFold Database format, as DeepMind's
  ``alphafold.common.confidence.confidence_json``/``pae_json`` write them (pLDDT to 2 decimals, PAE to
  1 decimal, compact separators).
- ``ranking_debug.json``: ``{"plddts": {model: mean pLDDT}, "order": [...]}`` for monomers (the
  ``_ptm`` presets too: AlphaFold2 ranks monomers by pLDDT, not pTM),
  ``{"iptm+ptm": {...}, "order": [...]}`` for multimers, with ``indent=4`` as ``run_alphafold.py``.
- ``ranked_<i>.pdb``/``.cif``: ``i`` is the 0-based rank, best first.

af2cpu's own: ``timings.json`` with start/end times per stage. The paths come from
:mod:`af2cpu.layout`; model results and features are written by :mod:`af2cpu.io`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from af2cpu.common.protein import Protein
from af2cpu.io import atomic_write_text, save_result_npz
from af2cpu.layout import TargetDir

# pLDDT bands of the AlphaFold Database: (lower bound, category letter, name, colour).
PLDDT_BANDS = (
    (90.0, "H", "Very high (pLDDT \u2265 90)", "#0053D6"),
    (70.0, "M", "Confident (90 > pLDDT \u2265 70)", "#65CBF3"),
    (50.0, "L", "Low (70 > pLDDT \u2265 50)", "#FFDB13"),
    (0.0, "D", "Very low (pLDDT < 50)", "#FF7D45"),
)


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


def write_model_outputs(folder: TargetDir, model_name: str, out: Mapping[str, Any]) -> list[Path]:
    """Write ``result_<model>.npz``, ``confidence_<model>.json`` and, when the model predicts PAE,
    ``pae_<model>.json``; returns the paths written.

    Everything in ``out`` is saved: leave out ``representations`` and per-recycle outputs before
    calling unless the user asked to keep them.
    """
    save_result_npz(folder.result(model_name), out)
    atomic_write_text(folder.confidence(model_name), confidence_json(out["plddt"]))
    written = [folder.result(model_name), folder.confidence(model_name)]
    if out.get("predicted_aligned_error") is not None:
        atomic_write_text(
            folder.pae(model_name), pae_json(out["predicted_aligned_error"], out["max_predicted_aligned_error"])
        )
        written.append(folder.pae(model_name))
    return written


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


def write_ranked_structures(
    folder: TargetDir,
    order: Sequence[str],
    pdb_strings: Mapping[str, str],
    cif_strings: Mapping[str, str] | None = None,
) -> None:
    """Write ``ranked_<i>.pdb`` (and ``.cif``) from each model's best structure (relaxed if any),
    ``i`` the 0-based rank in ``order``."""
    for index, name in enumerate(order):
        pdb_path, cif_path = folder.ranked(index)
        atomic_write_text(pdb_path, pdb_strings[name])
        if cif_strings is not None:
            atomic_write_text(cif_path, cif_strings[name])


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
