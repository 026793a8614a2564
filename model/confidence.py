"""Confidence metrics from the head logits: pLDDT, predicted aligned error, pTM and ipTM.

Pure numpy: logits in (numpy arrays or CPU tensors), numbers out, so results, plots and ranking
can use them without torch. Jumper et al. (2021) Suppl. 1.9.6 (pLDDT) and 1.9.7 (PAE, pTM).
"""

from __future__ import annotations

import numpy as np

from af2cpu.model.options import chunk_slices


def _as_array(x) -> np.ndarray:
    """A numpy view of an array or tensor, in its own dtype (no copy for CPU tensors)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_float_array(x) -> np.ndarray:
    """float64 numpy copy of an array or tensor: the metrics are cheap, so they are computed in
    float64 and returned as float32, the dtype AlphaFold2's results have."""
    return np.asarray(_as_array(x), dtype=np.float64)


# The (N, N, bins) metrics run a block of rows at a time, so their float64 temporaries stay near this
# size instead of several times the logits (gigabytes at N = 1000); rows are independent, so the
# numbers are the same.
METRICS_BLOCK_BYTES = 16 << 20


def _row_blocks(logits) -> list[slice]:
    """Slices of the first axis whose float64 copies stay near ``METRICS_BLOCK_BYTES``."""
    row_bytes = 8 * int(np.prod(logits.shape[1:], dtype=np.int64))
    return list(chunk_slices(logits.shape[0], max(1, METRICS_BLOCK_BYTES // max(1, row_bytes))))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def compute_plddt(logits) -> np.ndarray:
    """Per-residue pLDDT in [0, 100] from PredictedLDDTHead logits (..., N, num_bins).

    The expected lDDT-Cα over uniform bins on [0, 1], times 100.
    """
    logits = _as_float_array(logits)
    num_bins = logits.shape[-1]
    centers = (np.arange(num_bins, dtype=logits.dtype) + 0.5) / num_bins
    return ((_softmax(logits) * centers).sum(-1) * 100).astype(np.float32)


def _bin_centers(breaks: np.ndarray) -> np.ndarray:
    """Centers of the bins delimited by `breaks` (num_bins - 1), plus one for the open last bin."""
    step = breaks[1] - breaks[0]
    centers = breaks + step / 2
    return np.append(centers, centers[-1] + step)


def compute_predicted_aligned_error(logits, breaks) -> dict[str, np.ndarray]:
    """PAE from PredictedAlignedErrorHead logits (N, N, num_bins) and breaks (num_bins - 1).

    Returns 'aligned_confidence_probs' (N, N, num_bins), 'predicted_aligned_error' (N, N) — the
    expected error of residue j when aligned on residue i, in Å — and
    'max_predicted_aligned_error' (the center of the last bin, the largest value PAE can take).
    """
    logits = _as_array(logits)
    centers = _bin_centers(_as_float_array(breaks))
    probs = np.empty(logits.shape, np.float32)
    pae = np.empty(logits.shape[:-1], np.float32)
    for rows in _row_blocks(logits):
        block = _softmax(_as_float_array(logits[rows]))
        probs[rows] = block
        pae[rows] = (block * centers).sum(-1)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": pae,
        "max_predicted_aligned_error": np.asarray(centers[-1], np.float32),
    }


def predicted_tm_score(
    logits, breaks, residue_weights=None, asym_id=None, interface: bool = False
) -> np.ndarray:
    """pTM (or, with ``interface=True`` and `asym_id`, ipTM) from PAE logits (N, N, num_bins).

    For every alignment residue i, the expected TM-score term 1 / (1 + (e_ij / d0)^2) is averaged
    over residues j with `residue_weights` (default all 1); the score is that average for the best
    i. d0 follows TM-score (Yang & Skolnick 2004) for the number of weighted residues, clipped at
    19 so that it stays positive. For ipTM only pairs of residues in different chains count.
    """
    logits = _as_array(logits)
    weights = _weights(residue_weights, logits.shape[-2])
    tm_per_bin = _tm_per_bin(breaks, weights)
    tm_term = np.empty(logits.shape[:-1], np.float64)  # (N, N)
    for rows in _row_blocks(logits):
        tm_term[rows] = (_softmax(_as_float_array(logits[rows])) * tm_per_bin).sum(-1)
    return _tm_score(tm_term, weights, asym_id, interface)


def _weights(residue_weights, num_res: int) -> np.ndarray:
    return np.ones(num_res, np.float64) if residue_weights is None else _as_float_array(residue_weights)


def _tm_per_bin(breaks, weights: np.ndarray) -> np.ndarray:
    """The TM-score term of each PAE bin's center."""
    # As in DeepMind's AlphaFold 2.3, N is the integer part of the summed weights and the score is
    # the unweighted term of the best alignment residue (ColabFold's copy differs from this only
    # for fractional weights).
    clipped_num_res = max(int(weights.sum()), 19)
    d0 = 1.24 * (clipped_num_res - 15) ** (1.0 / 3) - 1.8
    centers = _bin_centers(_as_float_array(breaks))
    return 1.0 / (1 + np.square(centers) / np.square(d0))


def _tm_score(tm_term: np.ndarray, weights: np.ndarray, asym_id, interface: bool) -> np.ndarray:
    """pTM (ipTM with ``interface``) from the expected TM-score terms (N, N) of every residue pair."""
    num_res = tm_term.shape[0]
    if interface:
        if asym_id is None:
            raise ValueError("ipTM (interface=True) needs asym_id, the chain index of every residue")
        asym = np.asarray(asym_id)
        pair_mask = asym[:, None] != asym[None, :]
    else:
        pair_mask = np.ones((num_res, num_res), dtype=bool)
    tm_term = tm_term * pair_mask
    pair_weights = pair_mask * (weights[None, :] * weights[:, None])
    normed = pair_weights / (1e-8 + pair_weights.sum(-1, keepdims=True))
    per_alignment = (tm_term * normed).sum(-1)
    return np.asarray(per_alignment[(per_alignment * weights).argmax()], np.float32)


def aligned_error_from_blocks(blocks, breaks, num_res: int, residue_weights=None,
                              asym_id=None) -> dict[str, np.ndarray]:
    """PAE, its maximum, pTM (and ipTM with `asym_id`) from PAE logits given a block of rows at a
    time: ``blocks`` yields (rows slice, logits of those rows (rows, N, num_bins)). The numbers of
    compute_predicted_aligned_error and predicted_tm_score, without the logits or the
    aligned-confidence probabilities (N, N, num_bins) ever whole (very long sequences)."""
    weights = _weights(residue_weights, num_res)
    centers = _bin_centers(_as_float_array(breaks))
    tm_per_bin = _tm_per_bin(breaks, weights)
    pae = np.empty((num_res, num_res), np.float32)
    tm_term = np.empty((num_res, num_res), np.float64)
    for rows, logits in blocks:
        for sub in _row_blocks(logits):  # the float64 temporaries stay near METRICS_BLOCK_BYTES
            block = _softmax(_as_float_array(logits[sub]))
            at = slice(rows.start + sub.start, rows.start + sub.stop)
            pae[at] = (block * centers).sum(-1)
            tm_term[at] = (block * tm_per_bin).sum(-1)
    out = {"predicted_aligned_error": pae, "max_predicted_aligned_error": np.asarray(centers[-1], np.float32),
           "ptm": _tm_score(tm_term, weights, None, False)}
    if asym_id is not None:
        out["iptm"] = _tm_score(tm_term, weights, asym_id, True)
    return out


def confidence_metrics(result: dict, residue_weights=None, asym_id=None,
                       aligned_error_blocks=None) -> dict[str, np.ndarray]:
    """pLDDT, and with a 'predicted_aligned_error' head also PAE, pTM (and ipTM with `asym_id`),
    plus 'ranking_confidence', from the heads' outputs ``result[head_name]['logits']``. With
    ``aligned_error_blocks`` (see aligned_error_from_blocks) the PAE head's logits come a block of
    rows at a time instead, and the aligned-confidence probabilities are not kept.

    Ranking follows AlphaFold 2.3: 80 ipTM + 20 pTM with chains, else mean pLDDT.
    """
    out = {"plddt": compute_plddt(result["predicted_lddt"]["logits"])}
    pae = result.get("predicted_aligned_error")
    if aligned_error_blocks is not None:
        out.update(aligned_error_from_blocks(aligned_error_blocks, pae["breaks"], out["plddt"].shape[0],
                                             residue_weights, asym_id))
    elif pae is not None:
        out.update(compute_predicted_aligned_error(pae["logits"], pae["breaks"]))
        out["ptm"] = predicted_tm_score(pae["logits"], pae["breaks"], residue_weights)
        if asym_id is not None:
            out["iptm"] = predicted_tm_score(
                pae["logits"], pae["breaks"], residue_weights, asym_id, interface=True
            )
    if "iptm" in out:
        out["ranking_confidence"] = 0.8 * out["iptm"] + 0.2 * out["ptm"]
    else:
        out["ranking_confidence"] = np.asarray(out["plddt"].mean())
    return out
