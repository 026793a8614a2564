"""Figures of a prediction: pLDDT per model, PAE heatmaps, MSA coverage.

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global figure
registry, no GUI backend: batch runs on headless nodes do not leak figures) and, given ``path``,
also saves it as a PNG atomically. In a notebook the returned figure displays itself.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from af2cpu.formats import PLDDT_BANDS
from af2cpu.io import atomic_write_bytes

# Index of the gap in AlphaFold2's MSA alphabet (20 amino acids, X, gap).
MSA_GAP = 21

# The largest PAE AlphaFold2 can predict: the centre of its last bin (64 bins of 0.5 Å).
DEFAULT_MAX_PAE = 31.75

_DPI = 100
# PAE panels per row: the five models of a preset side by side; multimer's 25 predictions in 5 rows.
_PAE_COLUMNS = 5


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Render ``fig`` as a PNG at ``path``, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_png(fig, path)
    return fig


def plot_plddt(
    plddts: Mapping[str, np.ndarray], title: str = "", path: str | os.PathLike | None = None
) -> Figure:
    """pLDDT per residue, one line per model, over the AlphaFold DB confidence bands."""
    if not plddts:
        raise ValueError("plot_plddt needs the pLDDT of at least one model")
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    upper = 100.0
    for lower, _, label, colour in PLDDT_BANDS:
        ax.axhspan(lower, upper, color=colour, alpha=0.25, linewidth=0, label=label)
        upper = lower
    band_handles = ax.get_legend_handles_labels()
    length = 0
    for name, plddt in plddts.items():
        plddt = np.asarray(plddt, dtype=np.float32)
        residues = np.arange(1, len(plddt) + 1)
        ax.plot(residues, plddt, linewidth=1.2, label=f"{name} (mean {plddt.mean():.1f})")
        length = max(length, len(plddt))
    ax.set_xlim(1, max(length, 2))
    ax.set_ylim(0, 100)
    ax.set_xlabel("Residue")
    ax.set_ylabel("pLDDT")
    ax.set_title(title or "Predicted LDDT per position")
    handles, labels = ax.get_legend_handles_labels()
    n_bands = len(band_handles[0])
    # Bands inside, bottom right; models to the right of the plot, where they cover no line (as
    # the axes' own legend, so that the saved PNG's tight bounding box includes it).
    ax.add_artist(ax.legend(handles[:n_bands], labels[:n_bands], loc="lower right", fontsize="x-small"))
    ax.legend(handles[n_bands:], labels[n_bands:], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _finish(fig, path)


def plot_pae(
    paes: Mapping[str, np.ndarray],
    max_pae: float = DEFAULT_MAX_PAE,
    title: str = "",
    path: str | os.PathLike | None = None,
) -> Figure:
    """One PAE heatmap per model (scored residue x aligned residue), shared colour scale 0..max_pae.

    The green scale (dark = confident) is the AlphaFold Database's.
    """
    if not paes:
        raise ValueError("plot_pae needs the PAE of at least one model")
    n = len(paes)
    ncols = min(n, _PAE_COLUMNS)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.8, 3.6 * nrows + 0.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    axes = axes[:n]
    image = None
    for ax, (name, pae) in zip(axes, paes.items()):
        pae = np.asarray(pae, dtype=np.float32)
        extent = (0.5, pae.shape[1] + 0.5, pae.shape[0] + 0.5, 0.5)
        image = ax.imshow(pae, cmap="Greens_r", vmin=0.0, vmax=max_pae, extent=extent, interpolation="nearest")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("Scored residue")
        ax.set_ylabel("Aligned residue")
    fig.colorbar(image, ax=list(axes), label="Expected position error (\u00c5)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def msa_identity_and_coverage(msa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: identity to the query (row 0) over the row's aligned columns; per column: coverage.

    Returns ``(identity (N,), aligned (N, L) bool, coverage (L,) count of non-gap rows)``.
    """
    msa = np.asarray(msa)
    if msa.ndim != 2 or msa.shape[0] == 0:
        raise ValueError(f"an MSA must be an (N, L) integer array with N >= 1, got shape {msa.shape}")
    aligned = msa != MSA_GAP
    identical = (msa == msa[0]) & aligned
    identity = identical.sum(axis=1) / np.maximum(aligned.sum(axis=1), 1)
    return identity, aligned, aligned.sum(axis=0)


def plot_msa_coverage(
    msa: np.ndarray, title: str = "", path: str | os.PathLike | None = None
) -> Figure:
    """MSA coverage as AlphaFold's and ColabFold's notebooks draw it.

    Each sequence is a row, coloured where it aligns to the query by its identity to the query
    (rows sorted by identity, the most similar at the bottom next to the query), white where it has
    a gap; the black line is the number of sequences covering each position.
    """
    identity, aligned, coverage = msa_identity_and_coverage(msa)
    order = np.argsort(-identity, kind="stable")
    image = np.where(aligned[order], identity[order, None], np.nan).astype(np.float32)
    n_seq, length = image.shape
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    shown = ax.imshow(
        image,
        cmap="rainbow_r",
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(0.5, length + 0.5, -0.5, n_seq - 0.5),
    )
    ax.plot(np.arange(1, length + 1), coverage, color="black", linewidth=1.2)
    ax.set_xlim(0.5, length + 0.5)
    ax.set_ylim(-0.5, n_seq - 0.5)
    ax.set_xlabel("Position")
    ax.set_ylabel("Sequences")
    ax.set_title(title or f"Sequence coverage ({n_seq} sequences)")
    fig.colorbar(shown, ax=ax, label="Sequence identity to query")
    return _finish(fig, path)
