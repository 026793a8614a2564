"""The notebook view of one target's output folder: ``af2cpu.load_result(path)``.

Everything is read on first use and kept: opening a result is instant, the pLDDT of every model
loads without touching the large pair representations next to it in the same npz, and an MSA of ten
thousand sequences is parsed only when asked for. Files that a run did not write (no relaxation, no
templates, representations not kept) give ``None`` or an empty mapping, never an error.

A complex (AlphaFold-Multimer's features) adds per-chain views: ``chains`` (each chain's id in the
structure files, its id and header in the input, its residues), ``chain_plddt()``, ``chain_pae()``,
``chain_msas`` (each chain's search results in ``msas/<chain>/``), and ``iptm``; its plots show the
chains. A monomer is one chain, A.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from af2cpu import plots
from af2cpu.chains import ChainSpan, chain_spans, paired_msa_rows, real_msa_rows
from af2cpu.chains import is_complex as features_are_complex
from af2cpu.common import protein
from af2cpu.errors import InputError
from af2cpu.io import load_features_npz, load_result_npz, npz_members
from af2cpu.layout import BatchDir, TargetDir
from af2cpu.preprocessing import parsers
from af2cpu.preprocessing.features import read_template_hits
from af2cpu.preprocessing.searches import SEARCHES
from af2cpu.summary import TargetSummary

_MSA_SUFFIXES = (".sto", ".a3m")


class LazyMapping(Mapping):
    """A read-only mapping whose values are computed by ``load(key)`` on first access, then kept."""

    def __init__(self, keys: list[str], load: Callable[[str], Any]):
        self._keys = list(keys)
        self._load = load
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._values:
            self._values[key] = self._load(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._keys})"


def _numeric_suffix_key(stem: str) -> tuple:
    # ranked_2 < ranked_10; other names alphabetically after the ranked ones.
    match = re.fullmatch(r"ranked_(\d+)", stem)
    return (0, int(match.group(1)), "") if match else (1, 0, stem)


class TargetResult:
    """One target's predictions and intermediates, as found in ``<out>/<target_id>/``.

    Attributes (all lazy): ``features``, ``msas``, ``template_hits``, ``plddt``, ``pae``, ``ptm``,
    ``iptm``, ``representations``, ``structures``, ``ranking``, ``timings``, ``info`` (target.json),
    ``features_report``, ``chains``, ``chain_msas``, ``chain_template_hits``; ``result(model)`` gives a model's whole output dict. Methods: ``plot_plddt()``,
    ``plot_pae(model=None)``, ``plot_msa_coverage()``, ``view(model=None)``, ``chain(chain_id)``,
    ``chain_plddt(model=None)``, ``chain_pae(model=None)``.
    """

    def __init__(self, path: str | Path):
        self.folder = TargetDir(path)
        self.path = self.folder.path
        self.target_id = self.folder.id
        self._result_files = self.folder.result_files()

    # --- ranking, timings ------------------------------------------------------------------

    @functools.cached_property
    def ranking(self) -> dict[str, Any] | None:
        """``ranking_debug.json`` as a dict, or None when the run has not ranked yet."""
        return self._read_json(self.folder.ranking_debug)

    @functools.cached_property
    def timings(self) -> dict[str, Any] | None:
        """``timings.json``: ``{stage: {"start", "end", "duration"}}`` in seconds, or None."""
        return self._read_json(self.folder.timings)

    @property
    def untrained_params(self) -> bool:
        """True when the models ran with random (``params=random``) weights: not a prediction."""
        return bool(self.ranking and self.ranking.get("untrained_params"))

    @property
    def model_names(self) -> list[str]:
        """Models with a ``result_<model>.npz``, best first: in ``ranking_debug.json``'s order, then
        (before ranking, or models added since) by their saved ``ranking_confidence``."""
        order = [m for m in (self.ranking or {}).get("order", []) if m in self._result_files]
        rest = sorted((m for m in self._result_files if m not in order), key=self._saved_confidence, reverse=True)
        return order + rest

    def _saved_confidence(self, model: str) -> float:
        scores = self._scores[model]
        if "ranking_confidence" in scores:
            return float(scores["ranking_confidence"])
        return float(np.mean(scores["plddt"])) if "plddt" in scores else float("-inf")

    @property
    def best_model(self) -> str | None:
        """The top-ranked model (``ranked_0``); before ranking, the one with the best confidence."""
        names = self.model_names
        return names[0] if names else None

    # --- inputs ------------------------------------------------------------------------------

    @functools.cached_property
    def features(self) -> dict[str, np.ndarray] | None:
        """The raw features (``features.npz``), or None."""
        path = self.folder.features
        return load_features_npz(path) if path.is_file() else None

    @functools.cached_property
    def info(self) -> dict[str, Any] | None:
        """``target.json``: the id, the original FASTA header, the sequence (a complex's chains joined by
        ':') and, for a complex, its ``chains`` (input id, header, sequence); None when absent."""
        return self.folder.read_info()

    @functools.cached_property
    def features_report(self) -> dict[str, Any] | None:
        """``features_report.json`` (MSA sizes, templates; a complex's chains and pairing), or None."""
        return self._read_json(self.folder.features_report)

    @property
    def is_complex(self) -> bool:
        """True for a complex (AlphaFold-Multimer features, or a report listing its chains)."""
        return (features_are_complex(self.features) or bool((self.features_report or {}).get("chains"))
                or len((self.info or {}).get("chains", [])) > 1)

    @functools.cached_property
    def sequence(self) -> str | None:
        """The query sequence, from the features (or the first MSA's first row); a complex's chains
        joined by ':' in the input's order (as in ``target.json``)."""
        if self.is_complex:
            if self.info and "sequence" in self.info:
                return str(self.info["sequence"])
            return ":".join(c.sequence for c in self.chains) or None
        if self.features is not None and "sequence" in self.features:
            value = self.features["sequence"].ravel()[0]
            return value.decode() if isinstance(value, bytes) else str(value)
        first_msa = next(iter(self.msas.values()), None)
        return first_msa[0].replace("-", "") if first_msa else None

    @functools.cached_property
    def msas(self) -> Mapping[str, list[str]]:
        """``{file name: aligned sequences (query first)}`` for each A3M/Stockholm file in ``msas/``
        (a complex's as ``<chain>/<file>``, from ``msas/<chain>/``).

        Rows are aligned to the query: insertions removed, gaps as '-'. Each file is parsed on first
        access.
        """
        return _msa_files(self.folder.msas, nested=self.is_complex)

    # --- chains --------------------------------------------------------------------------------

    @functools.cached_property
    def chains(self) -> list[ChainSpan]:
        """The chains, in the order of the residues (a complex's: AlphaFold-Multimer's, entity by entity).

        Each :class:`~af2cpu.chains.ChainSpan` has ``id`` (the chain id of the PDB/mmCIF files),
        ``input_id`` and ``description`` (the chain's id and FASTA header in the input), ``start``,
        ``end`` (``residues``: the slice of per-residue arrays), ``length``, ``sequence``,
        ``entity_id``, ``sym_id`` and ``searched_as`` (whose ``msas/<id>/`` holds its searches: a
        homomer's copies share the first copy's). A monomer is one chain, A; [] when nothing tells
        its length.
        """
        if self.is_complex:
            report = (self.features_report or {}).get("chains", [])
            spans = chain_spans(self.features, report)
            headers = {c.get("id"): c.get("description", "") for c in (self.info or {}).get("chains", [])}
            return [c if c.description else dataclasses.replace(c, description=headers.get(c.input_id, ""))
                    for c in spans]
        length = self._length()
        if length is None:
            return []
        return [ChainSpan("A", "A", 0, length, 1, 1, self.sequence or "",
                          str((self.info or {}).get("description", "")), "A")]

    def chain(self, chain_id: str) -> ChainSpan:
        """The chain called ``chain_id`` in the structure files."""
        for chain in self.chains:
            if chain.id == chain_id:
                return chain
        raise KeyError(f"{self.path} has no chain {chain_id!r} (chains: {', '.join(c.id for c in self.chains) or 'none'})")

    def chain_plddt(self, model: str | None = None) -> dict[str, np.ndarray]:
        """``{chain id: pLDDT of its residues}`` of ``model`` (default: the best model)."""
        plddt = self._model_value(self.plddt, model, "pLDDT")
        return {c.id: plddt[c.residues] for c in self.chains}

    def chain_pae(self, model: str | None = None) -> dict[tuple[str, str], np.ndarray]:
        """``{(aligned chain, scored chain): PAE block}`` of ``model`` (default: the best model); the
        off-diagonal blocks are the inter-chain errors ipTM is made of."""
        pae = self._model_value(self.pae, model, "PAE")
        return {(a.id, b.id): pae[a.residues, b.residues] for a in self.chains for b in self.chains}

    def _model_value(self, values: Mapping[str, np.ndarray], model: str | None, what: str) -> np.ndarray:
        model = model if model is not None else self.best_model
        if model is None or model not in values:
            known = ", ".join(values) or "none"
            raise KeyError(f"{self.path}: no {what} for model {model!r} (models with {what}: {known})")
        return np.asarray(values[model])

    @functools.cached_property
    def chain_msas(self) -> dict[str, Mapping[str, list[str]]]:
        """``{chain id: {file name: aligned sequences}}``: each chain's search results (``msas/<chain>/``
        of the chain it was searched as; a monomer's are ``msas/`` itself), parsed on first access."""
        if not self.is_complex:
            return {c.id: self.msas for c in self.chains}
        return {c.id: _msa_files(self.folder.msas / c.searched_as) for c in self.chains}

    @functools.cached_property
    def chain_template_hits(self) -> dict[str, list[parsers.TemplateHit]]:
        """``{chain id: template hits}`` of a complex: each chain's hmmsearch result against
        ``pdb_seqres.txt`` (``msas/<chain>/``), aligned to the chain; [] for a chain without one.
        A monomer's chain A has :attr:`template_hits`."""
        if not self.is_complex:
            return {c.id: self.template_hits for c in self.chains}
        found = {}
        for chain in self.chains:
            hits: list[parsers.TemplateHit] = []
            for search in SEARCHES.values():
                path = self.folder.msas / chain.searched_as / search.output
                if search.template_hits is not None and path.is_file() and chain.sequence:
                    hits = read_template_hits(search.template_hits, path, chain.sequence)
                    break
            found[chain.id] = hits
        return found

    @functools.cached_property
    def template_hits(self) -> list[parsers.TemplateHit]:
        """Template hits of the hhsearch result in ``msas/`` (``TemplateHit``: name, sum_probs,
        alignment), or [] (a complex's are in ``chain_template_hits``)."""
        path = self._template_hits_file
        return parsers.read_hhr(path) if path is not None else []

    @property
    def _template_hits_file(self) -> Path | None:
        for search in SEARCHES.values():
            path = self.folder.msas / search.output
            if search.template_hits == "hhr" and path.is_file():
                return path
        return None

    # --- model outputs -----------------------------------------------------------------------

    def result(self, model: str) -> dict[str, Any]:
        """The whole output dict of ``model`` (as saved in ``result_<model>.npz``)."""
        return load_result_npz(self._result_path(model))

    def _result_path(self, model: str) -> Path:
        if model not in self._result_files:
            known = ", ".join(self.model_names) or "none"
            raise KeyError(f"{self.path} has no result_{model}.npz (models: {known})")
        return self._result_files[model]

    @functools.cached_property
    def _entries(self) -> dict[str, list[str]]:
        # The npz member names of each result: reading them touches only the zip directory.
        entries = {}
        for model in self.model_names:
            entries[model] = npz_members(self._result_path(model))
        return entries

    def _models_with(self, key: str) -> list[str]:
        return [m for m, files in self._entries.items() if any(f == key or f.startswith(key + "/") for f in files)]

    @functools.cached_property
    def _scores(self) -> dict[str, dict[str, Any]]:
        # The small per-model values; PAE and representations load only when asked for.
        keys = ["plddt", "ptm", "iptm", "ranking_confidence", "max_predicted_aligned_error"]
        return {m: load_result_npz(path, keys) for m, path in self._result_files.items()}

    def _score(self, key: str) -> dict[str, Any]:
        return {m: self._scores[m][key] for m in self.model_names if key in self._scores[m]}

    @property
    def plddt(self) -> dict[str, np.ndarray]:
        """``{model: per-residue pLDDT (L,)}``, best model first."""
        return self._score("plddt")

    @property
    def ptm(self) -> dict[str, float]:
        """``{model: pTM}`` for models that predict it, best model first."""
        return {m: float(v) for m, v in self._score("ptm").items()}

    @property
    def iptm(self) -> dict[str, float]:
        """``{model: ipTM}`` for multimer models, best model first."""
        return {m: float(v) for m, v in self._score("iptm").items()}

    @functools.cached_property
    def pae(self) -> Mapping[str, np.ndarray]:
        """``{model: predicted aligned error (L, L)}`` for models that predict it (``_ptm``, multimer).

        Each model's matrix loads on first access.
        """
        key = "predicted_aligned_error"
        return LazyMapping(self._models_with(key), lambda m: load_result_npz(self._result_path(m), [key])[key])

    @functools.cached_property
    def representations(self) -> Mapping[str, dict[str, np.ndarray]]:
        """``{model: {"single", "pair", "msa_first_row", "structure_module", ...}}`` where they were kept.

        A model whose result has no representations is not a key; each loads on first access.
        """
        key = "representations"
        return LazyMapping(self._models_with(key), lambda m: load_result_npz(self._result_path(m), [key])[key])

    @functools.cached_property
    def structures(self) -> Mapping[str, Any]:
        """``{"ranked_0": Protein, ..., "unrelaxed_<model>": ..., "relaxed_<model>": ...}``.

        Every PDB the run wrote, parsed on first access; ranked ones first, in rank order.
        """
        files = self.folder.structure_files()
        return LazyMapping(sorted(files, key=_numeric_suffix_key), lambda stem: _read_protein(files[stem]))

    def structure_path(self, model: str | None = None) -> Path:
        """The PDB to look at for ``model``: relaxed if there is one, else unrelaxed.

        Without ``model``: ``ranked_0.pdb``, or the best model's own PDB before ranking.
        """
        candidates = []
        if model is None:
            candidates.append(self.folder.ranked(0)[0])
            model = self.best_model
        if model is not None:
            candidates += [self.folder.relaxed(model), self.folder.unrelaxed(model)]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"{self.path} has no structure for {model or 'any model'}: expected one of "
            f"{', '.join(c.name for c in candidates) or self.folder.ranked(0)[0].name}"
        )

    # --- plots and views ---------------------------------------------------------------------

    @property
    def _plot_chains(self) -> list[ChainSpan]:
        return self.chains if self.is_complex else []

    def plot_plddt(self, path: str | Path | None = None) -> Figure:
        """pLDDT per residue of every model, over the AlphaFold DB confidence bands (a complex's chains
        marked)."""
        if not self.plddt:
            raise FileNotFoundError(f"{self.path} has no result_<model>.npz to plot pLDDT from")
        return plots.plot_plddt(self.plddt, title=self._title("pLDDT"), path=path, chains=self._plot_chains)

    def plot_pae(self, model: str | None = None, path: str | Path | None = None) -> Figure:
        """PAE heatmap of ``model``, or of every model that predicts PAE."""
        if not self.pae:
            raise FileNotFoundError(f"{self.path} has no model with a predicted aligned error (use _ptm presets)")
        if model is not None and model not in self.pae:
            raise KeyError(f"{self.path}: model {model!r} has no PAE (models with PAE: {', '.join(self.pae)})")
        paes = {m: self.pae[m] for m in ([model] if model is not None else self.pae)}
        max_pae = float(self._scores[next(iter(paes))].get("max_predicted_aligned_error", plots.DEFAULT_MAX_PAE))
        return plots.plot_pae(paes, max_pae=max_pae, title=self._title("PAE"), path=path, chains=self._plot_chains)

    def plot_msa_coverage(self, path: str | Path | None = None) -> Figure:
        """Sequence coverage of the model's MSA (``features.npz`` "msa"), coloured by identity (a
        complex's: without its padding rows, its paired rows as their own block)."""
        if self.features is None or "msa" not in self.features:
            raise FileNotFoundError(f"{self.path} has no features.npz with an 'msa' to plot the coverage of")
        return plots.plot_msa_coverage(real_msa_rows(self.features), title=self._title("MSA coverage"), path=path,
                                       chains=self._plot_chains, paired_rows=paired_msa_rows(self.features))

    def view(self, model: str | None = None, width: int = 640, height: int = 480):
        """A py3Dmol 3-D view coloured by pLDDT (B-factor); prints how to install py3Dmol if absent."""
        try:
            import py3Dmol  # deferred: an optional dependency (the notebook extra)
        except ImportError:
            print("view() needs py3Dmol: pip install py3Dmol (or pip install 'af2cpu[notebook]').")
            return None
        view = py3Dmol.view(width=width, height=height)
        view.addModel(self.structure_path(model).read_text(), "pdb")
        view.setStyle({"cartoon": {"colorscheme": {"prop": "b", "gradient": "roygb", "min": 50, "max": 90}}})
        view.zoomTo()
        return view

    # --- summary -----------------------------------------------------------------------------

    def summary(self) -> TargetSummary:
        """This target as a line of the batch summary: done when ranked, else pending."""
        best = self.best_model
        if self.ranking is None or best is None:
            return TargetSummary(self.target_id, "pending", length=self._length())
        return TargetSummary(
            self.target_id,
            "done",
            length=self._length(),
            best_model=best,
            mean_plddt=float(np.mean(self.plddt[best])),
            ptm=self.ptm.get(best),
            iptm=self.iptm.get(best),
            untrained_params=self.untrained_params,
        )

    def _length(self) -> int | None:
        if self.plddt:
            return len(next(iter(self.plddt.values())))
        if self.is_complex:
            return sum(c.length for c in self.chains) or None
        return len(self.sequence) if self.sequence else None

    def _title(self, what: str) -> str:
        warning = " \u2014 UNTRAINED PARAMS" if self.untrained_params else ""
        return f"{self.target_id}: {what}{warning}"

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def __repr__(self) -> str:
        lines = [f"TargetResult({self.target_id!r}, path='{self.path}')"]
        if self.untrained_params:
            lines.append("  !! untrained params (params=random): not a prediction")
        length = self._length()
        lines.append(f"  length: {length if length is not None else 'unknown'}")
        if self.is_complex:
            chains = [f"{c.id} ({c.length}{'' if c.input_id == c.id else f', input chain {c.input_id}'})"
                      for c in self.chains]
            lines.append(f"  chains: {', '.join(chains)}")
        if self.model_names:
            lines.append("  models (best first):")
            for model in self.model_names:
                scores = [f"mean pLDDT {np.mean(self.plddt[model]):.2f}"] if model in self.plddt else []
                scores += [f"pTM {self.ptm[model]:.3f}"] if model in self.ptm else []
                scores += [f"ipTM {self.iptm[model]:.3f}"] if model in self.iptm else []
                lines.append(f"    {model}: {', '.join(scores)}")
        else:
            lines.append("  models: none yet")
        lines.append(f"  ranked: {'yes' if self.ranking else 'no'}; structures: {len(self.structures)} PDB files")
        features = self.folder.features
        lines.append(f"  features: {features.name if features.is_file() else 'none'}")
        lines.append(f"  msas: {', '.join(self.msas) or 'none'}")
        hits = self._template_hits_file
        lines.append(f"  template hits: {self.folder.relative(hits) if hits is not None else 'none'}")
        if self.timings:
            total = max(t["end"] for t in self.timings.values()) - min(t["start"] for t in self.timings.values())
            lines.append(f"  timings: {len(self.timings)} stages over {total:.1f} s")
        return "\n".join(lines)


def _msa_files(folder: Path, nested: bool = False) -> Mapping[str, list[str]]:
    """The A3M/Stockholm files of ``folder`` (and, ``nested``, of its subfolders as ``<sub>/<file>``),
    each parsed on first access."""
    if not folder.is_dir():
        return LazyMapping([], lambda name: [])
    pattern = "**/*" if nested else "*"
    # Hidden entries are a search's scratch folders (left behind by a killed run).
    files = (p.relative_to(folder) for p in folder.glob(pattern) if p.suffix in _MSA_SUFFIXES and p.is_file())
    names = sorted(f.as_posix() for f in files if not any(part.startswith(".") for part in f.parts))
    return LazyMapping(names, lambda name: _read_msa_sequences(folder / name))


def _read_msa_sequences(path: Path) -> list[str]:
    msa = parsers.read_stockholm(path) if path.suffix == ".sto" else parsers.read_a3m(path)
    return list(msa.sequences)


def _read_protein(path: Path) -> protein.Protein:
    return protein.from_pdb_string(path.read_text())


def load_result(path: str | Path) -> TargetResult:
    """Open the output folder of one target (``<out>/<target_id>``) for exploration in a notebook."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist: pass the output folder of one target, <out>/<target_id>")
    if not path.is_dir():
        raise InputError(f"{path} is a file, not a target folder: pass the folder <out>/<target_id> it is in")
    folder = TargetDir(path)
    has_results = bool(folder.result_files())
    if not has_results and folder.has_pickled_results():
        raise InputError(
            f"{path} looks like an AlphaFold2 output folder (its results are pickles, which af2cpu never "
            f"reads): rerun the prediction with `af2cpu predict` to get result_<model>.npz files"
        )
    if folder.looks_like_target():
        return TargetResult(path)
    if BatchDir(path).summary_json.is_file():
        targets = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise InputError(
            f"{path} is a batch output folder, not a target folder: pass one of its targets, "
            f"e.g. load_result('{path / targets[0]}')" if targets else f"{path} is a batch output folder with no targets yet"
        )
    raise InputError(
        f"{path} is not an af2cpu target folder: it has none of features.npz, result_<model>.npz, "
        f"ranking_debug.json, timings.json or msas/; pass the folder <out>/<target_id> that "
        f"`af2cpu predict` wrote"
    )
