"""Figures of a prediction: pLDDT per model, PAE heatmaps, MSA coverage.

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global figure
registry, no GUI backend: batch runs on headless nodes do not leak figures) and, given ``path``,
also saves it as a PNG atomically. In a notebook the returned figure displays itself.

For a complex (``chains``: its :class:`af2cpu.chains.ChainSpan` list) the figures show where each chain
is: pLDDT with a coloured, labelled band per chain and lines at the chain boundaries; PAE with chain
separators and chain labels; the MSA coverage with the chain boundaries and the paired rows as their
own block next to the query. :func:`write_target_plots` writes a target folder's three plots.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from af2cpu.chains import ChainSpan, chain_spans, paired_msa_rows, real_msa_rows
from af2cpu.formats import PLDDT_BANDS
from af2cpu.io import atomic_write_bytes, load_features_npz, load_result_npz
from af2cpu.layout import TargetDir

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


def _chain_colour(index: int) -> tuple:
    colours = colormaps["Dark2"].colors
    return colours[index % len(colours)]


def _chain_separators(ax: Axes, chains: Sequence[ChainSpan], rows: bool = False, colour: str = "black") -> None:
    """Lines between consecutive chains (residue positions are 1-based: chain i starts at start + 1)."""
    for chain in chains[1:]:
        ax.axvline(chain.start + 0.5, color=colour, linewidth=0.8)
        if rows:
            ax.axhline(chain.start + 0.5, color=colour, linewidth=0.8)


def _chain_labels(ax: Axes, chains: Sequence[ChainSpan], rows: bool = False) -> None:
    """Each chain's id centred over its residues on a top axis (and on a right axis with ``rows``)."""
    middles = [(c.start + c.end + 1) / 2 for c in chains]
    labels = [c.id for c in chains]
    top = ax.secondary_xaxis("top")
    top.set_xticks(middles, labels=labels)
    top.tick_params(length=0)
    if rows:
        right = ax.secondary_yaxis("right")
        right.set_yticks(middles, labels=labels)
        right.tick_params(length=0)


def plot_plddt(
    plddts: Mapping[str, np.ndarray],
    title: str = "",
    path: str | os.PathLike | None = None,
    chains: Sequence[ChainSpan] = (),
) -> Figure:
    """pLDDT per residue, one line per model, over the AlphaFold DB confidence bands.

    With ``chains`` (a complex): a band of each chain's colour along the top, labelled with its id,
    and a line at each chain boundary.
    """
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
    for index, chain in enumerate(chains):
        ax.axvspan(chain.start + 0.5, chain.end + 0.5, ymin=0.96, ymax=1.0, color=_chain_colour(index), linewidth=0)
    _chain_separators(ax, chains, colour="dimgray")
    if chains:
        _chain_labels(ax, chains)
    ax.set_xlabel("Residue" + (" (chains one after another)" if len(chains) > 1 else ""))
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
    chains: Sequence[ChainSpan] = (),
) -> Figure:
    """One PAE heatmap per model (scored residue x aligned residue), shared colour scale 0..max_pae.

    The green scale (dark = confident) is the AlphaFold Database's. With ``chains`` (a complex): lines
    between the chains' blocks and the chain ids along the top and the right.
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
        _chain_separators(ax, chains, rows=True)
        if len(chains) > 1:
            _chain_labels(ax, chains, rows=True)
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
    msa: np.ndarray,
    title: str = "",
    path: str | os.PathLike | None = None,
    chains: Sequence[ChainSpan] = (),
    paired_rows: int = 0,
) -> Figure:
    """MSA coverage as AlphaFold's and ColabFold's notebooks draw it.

    Each sequence is a row, coloured where it aligns to the query by its identity to the query
    (rows sorted by identity, the most similar at the bottom next to the query), white where it has
    a gap; the black line is the number of sequences covering each position. For a complex
    (``chains``), lines mark the chain boundaries; its first ``paired_rows`` rows (the rows paired
    across chains) stay a block of their own at the bottom, below a labelled line, each block
    sorted by identity.
    """
    identity, aligned, coverage = msa_identity_and_coverage(msa)
    if not 0 <= paired_rows <= len(identity):
        raise ValueError(f"paired_rows must lie in 0..{len(identity)} (the MSA's rows), got {paired_rows}")
    order = np.concatenate([np.argsort(-identity[:paired_rows], kind="stable"),
                            paired_rows + np.argsort(-identity[paired_rows:], kind="stable")])
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
    _chain_separators(ax, chains)
    if len(chains) > 1:
        _chain_labels(ax, chains)
    if paired_rows:
        ax.axhline(paired_rows - 0.5, color="black", linewidth=1.0, linestyle="--")
        for y, text, align in ((paired_rows - 0.5, f"paired ({paired_rows}) ", "top"),
                               (paired_rows - 0.5, f"unpaired ({n_seq - paired_rows}) ", "bottom")):
            ax.text(length + 0.5, y, text, ha="right", va=align, fontsize="small",
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1.0})
    ax.set_xlabel("Position" + (" (chains one after another)" if len(chains) > 1 else ""))
    ax.set_ylabel("Sequences")
    paired = f", {paired_rows} paired" if paired_rows else ""
    ax.set_title(title or f"Sequence coverage ({n_seq} sequences{paired})")
    fig.colorbar(shown, ax=ax, label="Sequence identity to query")
    return _finish(fig, path)


def write_target_plots(
    folder: TargetDir, order: Sequence[str], title: str, msa_title: str | None = None
) -> list[Path]:
    """Write ``plots/plddt.png``, ``plots/pae.png`` (when a model predicts PAE) and
    ``plots/msa_coverage.png`` of a target folder from its ``result_<model>.npz`` of the models in
    ``order`` (best first) and its ``features.npz``; returns the paths written.

    ``title`` heads the pLDDT and PAE plots, ``msa_title`` (default: the folder's target id) the MSA
    coverage. A complex's plots show its chains (from the features' ``asym_id``) and its paired rows;
    the padding rows of its MSA are left out.
    """
    results = {name: load_result_npz(folder.result(name), prefixes=[
        "plddt", "predicted_aligned_error", "max_predicted_aligned_error"]) for name in order}
    features = load_features_npz(folder.features)
    chains = chain_spans(features)
    folder.plots.mkdir(exist_ok=True)
    plot_plddt({n: r["plddt"] for n, r in results.items()}, title=title, path=folder.plddt_plot, chains=chains)
    written = [folder.plddt_plot]
    paes = {n: r["predicted_aligned_error"] for n, r in results.items() if "predicted_aligned_error" in r}
    if paes:
        max_pae = float(next(iter(results.values())).get("max_predicted_aligned_error", DEFAULT_MAX_PAE))
        plot_pae(paes, max_pae=max_pae, title=title, path=folder.pae_plot, chains=chains)
        written.append(folder.pae_plot)
    plot_msa_coverage(real_msa_rows(features), title=folder.id if msa_title is None else msa_title,
                      path=folder.msa_coverage_plot, chains=chains, paired_rows=paired_msa_rows(features))
    written.append(folder.msa_coverage_plot)
    return written
