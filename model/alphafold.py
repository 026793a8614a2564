"""The whole monomer network: embeddings, Evoformer, structure module, heads, and recycling.

``AlphaFold.from_params(path)`` loads an official ``params_model_*.npz``; ``model.predict(features)``
takes AlphaFold2's processed features (the layout of the reference's ``np_example_to_features``,
with its leading recycle axis) as numpy arrays and returns numpy arrays with the reference's output
names and nesting. Torch stays inside.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.model import confidence, multimer
from af2cpu.model.embedders import (
    ChainRelativePositionEncoding,
    ExtraMsaEmbedder,
    InputEmbedder,
    RecyclingEmbedder,
    RelativePositionEncoding,
)
from af2cpu.model.evoformer import EvoformerIteration
from af2cpu.model.heads import (
    DistogramHead,
    ExperimentallyResolvedHead,
    MaskedMsaHead,
    PredictedAlignedErrorHead,
    PredictedLDDTHead,
)
from af2cpu.model.multimer_sampling import sampling_generator, validate_multimer_example
from af2cpu.model.options import Options, embedding_steps
from af2cpu.model.params import (
    load_params,
    preset_from_filename,
    read_params,
    triangle_layout_error,
    write_safetensors,
)
from af2cpu.model.presets import Preset, get_preset, preset_families
from af2cpu.model.primitives import Linear
from af2cpu.model.structure_module import StructureModule
from af2cpu.model.template import (
    MultimerTemplateEmbedding,
    TemplateChiEmbedder,
    TemplateEmbedding,
    TemplateTorsionEmbedder,
)
from af2cpu.runtime.precision import cpu_kind

# The scope of the multimer's relative position encoding (DeepMind's method name under `evoformer`).
_CHAIN_RELPOS = "~_relative_encoding"
_TEMPLATE_KEYS = ("template_aatype", "template_all_atom_positions", "template_all_atom_masks",
                  "template_pseudo_beta", "template_pseudo_beta_mask", "template_mask")


class EmbeddingsAndEvoformer(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 5-17: embeddings, template stack,
    extra-MSA stack (Alg. 18 'ExtraMsaStack') and the Evoformer stack (Alg. 6 'EvoformerStack')."""

    def __init__(self, preset: Preset):
        super().__init__()
        a = preset.architecture
        self.preset = preset
        self.options = Options()
        self.input_embedder = InputEmbedder(a.target_feat_dim, a.msa_feat_dim, a.msa_channel, a.pair_channel)
        self.recycling_embedder = RecyclingEmbedder(a.msa_channel, a.pair_channel, a.prev_pos)
        if a.max_relative_chain is None:
            self.relative_position = RelativePositionEncoding(a.max_relative_feature, a.pair_channel)
        else:  # the multimer's, in DeepMind's scope of this name
            self.add_module(_CHAIN_RELPOS, ChainRelativePositionEncoding(
                a.max_relative_feature, a.max_relative_chain, a.pair_channel))
        if preset.use_templates:
            embedding = MultimerTemplateEmbedding if a.template.multimer else TemplateEmbedding
            self.template_embedding = embedding(a.template, a.pair_channel)
        if preset.embed_torsion_angles:
            self.template_torsion_embedder = (
                TemplateChiEmbedder(a.msa_channel) if a.template.multimer else TemplateTorsionEmbedder(
                    a.msa_channel, placeholder_for_undefined=preset.template_torsion_placeholders))
        self.extra_msa_embedder = ExtraMsaEmbedder(a.extra_msa_feat_dim, a.extra_msa.msa_channel)
        self.extra_msa_stack = nn.ModuleList(
            EvoformerIteration(a.extra_msa, a.pair_channel) for _ in range(a.extra_msa.num_block))
        self.evoformer_iteration = nn.ModuleList(
            EvoformerIteration(a.evoformer, a.pair_channel) for _ in range(a.evoformer.num_block))
        self.single_activations = Linear(a.msa_channel, a.seq_channel)

    def forward(self, batch: dict[str, torch.Tensor], prev: dict[str, torch.Tensor],
                consume_prev: bool = False) -> dict[str, torch.Tensor]:
        """One pass's features (no recycle axis) and the previous pass's state -> representations.

        The stacks run in the dtype of ``self.options`` (fp32 or bf16); the features, the
        recycled state and the single representation are fp32; the pair and MSA representations are
        returned in the trunk's dtype (the heads read them a block of rows at a time, and the pair is
        the next pass's recycled pair as it is). With ``consume_prev`` the recycled
        pair is taken out of ``prev`` once embedded, so that it is freed while the stacks run
        (AlphaFold.predict, which holds no other reference to it).
        """
        dtype = self.options.dtype
        seq_mask = batch["seq_mask"]
        mask_2d = seq_mask[:, None] * seq_mask[None, :]
        pair = self._embed_pair(batch, prev, dtype)
        if consume_prev:
            del prev["prev_pair"]
        if self.preset.use_templates:
            # The update is added into the pair in place (the embedded pair is read by no one else).
            pair = self.template_embedding(pair, batch, mask_2d, out=pair)
        # The MSAs after the templates, which do not read them, and the MSA after the extra-MSA stack,
        # which does not read it either: neither is alive while the templates are embedded, nor the MSA
        # through the extra-MSA stack (the same numbers in AlphaFold2's order).
        extra = self._embed_extra_msa(batch, dtype)
        run = _block_runner(self.options)
        for block in self.extra_msa_stack:
            extra, pair = run(block, extra, pair, batch["extra_msa_mask"], mask_2d)
        del extra
        msa = self._embed_msa(batch, prev, dtype)

        msa_mask = batch["msa_mask"]
        if self.preset.embed_torsion_angles:
            rows, rows_mask = self.template_torsion_embedder(
                batch["template_aatype"], batch["template_all_atom_positions"], batch["template_all_atom_masks"])
            msa, msa_mask = torch.cat([msa, rows.to(dtype)]), torch.cat([msa_mask, rows_mask])
        for block in self.evoformer_iteration:
            msa, pair = run(block, msa, pair, msa_mask, mask_2d)

        # The structure module and the heads run in fp32, as in AlphaFold2, reading the pair and the
        # MSA in blocks of rows (upcast per block).
        num_seq = batch["msa_feat"].shape[0]
        return {"single": self.single_activations(msa[0]).float(), "pair": pair,
                "msa": msa[:num_seq], "msa_first_row": msa[0].float()}

    def _embed_pair(self, batch: dict[str, torch.Tensor], prev: dict[str, torch.Tensor],
                    dtype: torch.dtype) -> torch.Tensor:
        """The embedded pair (Alg. 2 lines 5-13: input embedding, relative positions, the recycled
        pair and positions), in the trunk's ``dtype``.

        The embedders compute in fp32, as in AlphaFold2. Each representation (this pair, the MSA of
        :meth:`_embed_msa` and the extra MSA of :meth:`_embed_extra_msa`) is written a block of rows
        at a time into its ``dtype`` tensor, every sum of a block done in fp32 before the one cast, so the fp32 intermediates (the input embedding,
        the recycled pair's layer norm and distogram projection, the relative positions, the extra
        MSA's one-hot features) exist one block at a time instead of whole (several (L, L, 128) fp32
        tensors at long lengths).
        """
        embed, recycle = self.input_embedder, self.recycling_embedder
        if hasattr(self, "relative_position"):
            def relpos(rows):
                return self.relative_position(batch["residue_index"], rows)
        else:
            def relpos(rows):
                return self.get_submodule(_CHAIN_RELPOS)(batch["residue_index"], batch["asym_id"], batch["entity_id"],
                                                         batch["sym_id"], rows)
        target_feat = batch["target_feat"]
        n_res = target_feat.shape[0]
        pair = target_feat.new_empty((n_res, n_res, recycle.prev_pair_norm.scale.shape[0]), dtype=dtype)
        for s in embedding_steps(n_res, n_res * pair.shape[-1] * 4):
            update = recycle.pair_rows(batch["aatype"], prev["prev_pos"], prev["prev_pair"], s)
            pair[s] = (embed.pair_rows(target_feat, s) + update).add_(relpos(s))
        return pair

    def _embed_msa(self, batch: dict[str, torch.Tensor], prev: dict[str, torch.Tensor],
                   dtype: torch.dtype) -> torch.Tensor:
        """The embedded MSA with the recycled first row (Alg. 2 lines 5, 15), in the trunk's ``dtype``,
        a block of rows at a time (see :meth:`_embed_pair`)."""
        embed, recycle = self.input_embedder, self.recycling_embedder
        target_feat, msa_feat = batch["target_feat"], batch["msa_feat"]
        n_res = target_feat.shape[0]
        first_row = recycle.prev_msa_first_row_norm(prev["prev_msa_first_row"])
        msa = msa_feat.new_empty((msa_feat.shape[0], n_res, first_row.shape[-1]), dtype=dtype)
        for s in embedding_steps(msa.shape[0], n_res * msa.shape[-1] * 4):
            rows = embed.msa_rows(target_feat, msa_feat[s])
            if s.start == 0:
                rows[0] += first_row
            msa[s] = rows
        return msa

    def _embed_extra_msa(self, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The embedded extra MSA (Alg. 2 line 14), in the trunk's ``dtype``, a block of rows at a time
        (see :meth:`_embed_pair`)."""
        extra_features = (batch["extra_msa"], batch["extra_has_deletion"], batch["extra_deletion_value"])
        n_res = batch["target_feat"].shape[0]
        channels = self.extra_msa_embedder.extra_msa_activations.weights.shape[1]
        extra = batch["target_feat"].new_empty((extra_features[0].shape[0], n_res, channels), dtype=dtype)
        for s in embedding_steps(extra.shape[0], n_res * channels * 4):
            extra[s] = self.extra_msa_embedder(*(f[s] for f in extra_features))
        return extra


def _call_block(block: nn.Module, *args):
    return block(*args)


def _call_block_in_place(block: nn.Module, *args):
    # The stacks own their representations: each block adds its updates into them (one pair tensor,
    # not the input and its sum). Compiled blocks stay out of place: a graph that mutates its inputs
    # makes inductor compute the result and copy it back.
    return block(*args, inplace=True)


@functools.cache
def _compiled_block_call():
    # One compiled function for every block: the blocks' parameters are graph inputs (dynamo
    # inlines nn.Modules), so the 48 Evoformer blocks share one graph, and the extra-MSA blocks
    # another; dynamic shapes let a new length or depth reuse them.
    return torch.compile(_call_block, dynamic=True)


def _block_runner(options: Options):
    """How the trunk calls its repeated blocks: eagerly, or through ``torch.compile``."""
    if not options.compile:
        return _call_block_in_place
    if options.compile_cache_dir is not None:
        # Inductor reads its cache location from the environment only.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_for_this_cpu(options.compile_cache_dir))
    return _compiled_block_call()


def compile_cache_for_this_cpu(folder: str) -> str:
    """Inductor's persistent cache for this kind of CPU: a folder of ``folder`` per
    af2cpu.runtime.precision.cpu_kind. Inductor's graph cache does not tell CPUs apart, yet its code depends on
    them (the vector width, -march=native): a cache filled on a CPU with AVX512 and read on one with AVX2 only
    gave NaN everywhere, and the reverse crashed (double free), measured with torch 2.13. A home folder shared
    by nodes of several kinds is the usual case on clusters."""
    return os.path.join(folder, f"cpu-{cpu_kind()}")


class AlphaFoldIteration(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference' lines 5-21: one recycling pass, trunk and heads."""

    def __init__(self, preset: Preset):
        super().__init__()
        a = preset.architecture
        self.options = Options()
        self.evoformer = EmbeddingsAndEvoformer(preset)
        self.structure_module = StructureModule(a.structure_module, a.seq_channel, a.pair_channel)
        self.distogram_head = DistogramHead(a.heads, a.pair_channel)
        self.masked_msa_head = MaskedMsaHead(a.heads, a.msa_channel)
        self.experimentally_resolved_head = ExperimentallyResolvedHead(a.seq_channel)
        self.predicted_lddt_head = PredictedLDDTHead(a.heads, a.structure_module.num_channel)
        if preset.predicted_aligned_error:
            self.predicted_aligned_error_head = PredictedAlignedErrorHead(a.heads, a.pair_channel)

    def forward(self, batch: dict[str, torch.Tensor], prev: dict[str, torch.Tensor], consume_prev: bool = False) -> dict:
        """One pass; with ``consume_prev`` the trunk takes the recycled pair out of ``prev`` once it is
        embedded (see EmbeddingsAndEvoformer.forward)."""
        representations = self.evoformer(batch, prev, consume_prev)
        # The structure module first: its attention logits (H·L² fp32) and the (L, L, bins) logits of
        # the heads are not alive together.
        structure = self.structure_module(representations, batch)
        ret = {"representations": representations,
               "experimentally_resolved": self.experimentally_resolved_head(representations, batch)}
        compact = self.options.compact_outputs
        if not compact:
            ret["distogram"] = self.distogram_head(representations, batch)
        representations["msa"] = _restore_msa_rows(representations["msa"], batch)
        ret["masked_msa"] = self.masked_msa_head(representations, batch)
        representations.update(structure.pop("representations"))
        ret["structure_module"] = structure
        # The confidence heads read the structure module's single representation.
        ret["predicted_lddt"] = self.predicted_lddt_head(representations, batch)
        if hasattr(self, "predicted_aligned_error_head"):
            head = self.predicted_aligned_error_head
            # Compact: only the breaks; AlphaFold.predict computes PAE and pTM from head.logit_blocks.
            ret["predicted_aligned_error"] = ({"breaks": head.breaks()} if compact
                                              else head(representations, batch))
        return ret


def _required_features(preset: Preset) -> dict[str, tuple[str, ...]]:
    """Feature name -> symbolic shape without the recycle axis (L residues, S/E/T rows)."""
    a = preset.architecture
    req = {
        "aatype": ("L",), "seq_mask": ("L",), "residue_index": ("L",),
        "target_feat": ("L", a.target_feat_dim), "msa_feat": ("S", "L", a.msa_feat_dim), "msa_mask": ("S", "L"),
        "extra_msa": ("E", "L"), "extra_msa_mask": ("E", "L"), "extra_has_deletion": ("E", "L"),
        "extra_deletion_value": ("E", "L"), "atom14_atom_exists": ("L", 14),
        "residx_atom37_to_atom14": ("L", 37), "atom37_atom_exists": ("L", 37),
    }
    if preset.use_templates:
        req.update({"template_aatype": ("T", "L"), "template_all_atom_positions": ("T", "L", 37, 3),
                    "template_all_atom_masks": ("T", "L", 37), "template_pseudo_beta": ("T", "L", 3),
                    "template_pseudo_beta_mask": ("T", "L"), "template_mask": ("T",)})
    return req


_INT_FEATURES = {"aatype", "residue_index", "extra_msa", "residx_atom37_to_atom14", "template_aatype"}


class AlphaFold(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 2 'Inference': the model with recycling (the monomer, or
    AlphaFold-Multimer, Evans et al. 2022, for a multimer preset)."""

    def __init__(self, preset: Preset | str = "model_1_ptm", options: Options | None = None):
        super().__init__()
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.alphafold_iteration = AlphaFoldIteration(self.preset)
        self.set_options(options or Options())

    def set_options(self, options: Options) -> None:
        """Hand one runtime options object (chunk sizes, precision) to every module."""
        self.options = options
        for module in self.modules():
            if module is not self and hasattr(module, "options"):
                module.options = options

    @classmethod
    def from_params(cls, path: str | os.PathLike, preset: Preset | str | None = None,
                    options: Options | None = None, cache_dir: str | os.PathLike | None = None) -> AlphaFold:
        """Load an official parameter file (``.npz``, or a ``.safetensors`` copy).

        The preset is inferred from the file name (``params_model_3_ptm.npz`` -> ``model_3_ptm``)
        unless given. A file that does not hold exactly the preset's tensors is an InputError.
        With ``cache_dir``, an ``.npz`` is converted once into a safetensors copy there (keyed by
        the file's name, size and modification time), which later loads read instead.
        """
        if preset is None:
            preset = preset_from_filename(path)
            if preset is None:
                raise InputError(f"cannot tell the model preset from the file name {os.fspath(path)!r}; "
                                 f"pass preset='model_1_ptm' (or another of {preset_families(False)}, "
                                 f"{preset_families(True)})")
        with torch.device("meta"):
            model = cls(preset, options)
        flat = _read_with_cache(path, cache_dir)
        file_is_multimer = any(k.startswith(_MULTIMER_KEY) for k in flat)
        if file_is_multimer != model.preset.multimer:
            kind = "an AlphaFold-Multimer" if file_is_multimer else "a monomer AlphaFold2"
            raise InputError(
                f"parameter file {os.fspath(path)} holds {kind} model's parameters, but preset {model.preset.name} "
                f"is {'a multimer' if model.preset.multimer else 'a monomer'} model; pass the matching preset "
                f"({preset_families(file_is_multimer)}) or the matching file")
        layout = triangle_layout_error(path, flat, model.preset)
        if layout:
            raise InputError(layout)
        try:
            load_params(model, flat, source=f"parameter file {os.fspath(path)}")
        except InputError as exc:
            raise InputError(f"{exc} — is it the file of preset {model.preset.name}? "
                             f"{_guess_preset_hint(flat)}") from None
        model.set_options(model.options)
        return model.eval()

    def _pass_features(self, features: dict[str, np.ndarray], index: int) -> dict[str, torch.Tensor]:
        batch = {}
        for name in _required_features(self.preset):
            value = np.asarray(features[name])
            value = value[min(index, value.shape[0] - 1)]
            batch[name] = torch.from_numpy(np.ascontiguousarray(
                value.astype(np.int64 if name in _INT_FEATURES else np.float32)))
        return _at_least_one_row(_without_masked_rows(batch))

    def check_features(self, features: dict[str, np.ndarray]) -> int:
        """Validate names and shapes of processed features; returns the number of recycle slices."""
        missing = [k for k in _required_features(self.preset) if k not in features]
        if missing:
            raise InputError(f"features lack {', '.join(missing)} (needed by preset {self.preset.name}); "
                             "pass AlphaFold2's processed features (np_example_to_features layout)")
        sizes: dict[str, tuple[int, str]] = {}
        slices = None
        for name, dims in _required_features(self.preset).items():
            shape = np.shape(features[name])
            if len(shape) != len(dims) + 1:
                raise InputError(f"feature {name} has shape {shape}; expected (recycles, "
                                 f"{', '.join(map(str, dims))})")
            if slices is None:
                slices = shape[0]
            elif shape[0] != slices:
                raise InputError(f"feature {name} has {shape[0]} recycle slices, aatype has {slices}")
            _check_axes(name, shape, dims, sizes)
        return slices

    @torch.inference_mode()
    def predict(self, features: dict[str, np.ndarray], num_recycle: int | None = None,
                early_stop_tolerance: float | None = None, return_recycles: bool = False,
                random_seed: int = 0, prediction_index: int = 0, return_representations: bool = True) -> dict:
        """Run the model with recycling on processed features (numpy in, numpy out).

        Monomer presets take AlphaFold2's processed features: pass ``i`` reads slice ``i`` of the
        features' leading recycle axis (the last slice when there are fewer). Multimer presets take
        DeepMind's multimer example as it is (``pipeline_multimer``; no recycle axis) and sample its
        MSA in every pass from a generator seeded by ``random_seed`` and ``prediction_index``; their
        output has ``iptm`` next to ``ptm``. Recycling stops early once the RMS change of the Cα
        distance matrix falls below ``early_stop_tolerance`` Å (default: the preset's; 0 disables).
        With ``return_recycles`` the output holds ``recycles``: the outputs of every pass. Without
        ``return_representations`` it holds no ``representations`` (nor do the recycles): no fp32 copy
        of a bf16 pair and MSA (L²·c_z·4 bytes, 1 GiB at L=1500) is made for a caller that drops them.
        """
        num_recycle = self.preset.num_recycle if num_recycle is None else num_recycle
        if early_stop_tolerance is None:
            early_stop_tolerance = self.preset.recycle_early_stop_tolerance
        features = dict(features)
        if self.preset.multimer:
            validate_multimer_example(features, f"features for {self.preset.name}")
            example = multimer.to_tensors(features)

            def pass_batch(index: int) -> dict[str, torch.Tensor]:
                # Each pass draws its own MSA sample and masks, as DeepMind's: a function of the seed,
                # the prediction and the pass only.
                generator = sampling_generator(random_seed, prediction_index, index)
                batch = multimer.pass_features(self.preset, example, generator)
                return _at_least_one_row(_without_masked_rows(batch, templates=False))
            asym_id, seq_mask = np.asarray(features["asym_id"]), np.asarray(features["seq_mask"])
        else:
            if np.ndim(features.get("aatype", [[0]])) == 1:  # a single pass without recycle axis
                features = {k: np.asarray(v)[None] for k, v in features.items()}
            slices = self.check_features(features)
            if slices != 1 and slices < num_recycle + 1:
                raise InputError(f"features have {slices} recycle slices; {num_recycle} recycles need "
                                 f"{num_recycle + 1} (or 1, reused by every pass)")
            seq_mask = np.asarray(features["seq_mask"])[0]

            def pass_batch(index: int) -> dict[str, torch.Tensor]:
                return self._pass_features(features, index)
            asym_id = None
        seq_mask = seq_mask.astype(np.float32)
        num_res = seq_mask.shape[0]
        a = self.preset.architecture
        # The recycled pair is kept in the trunk's dtype: the trunk's pair is that dtype, so a bf16
        # copy holds the same numbers as the fp32 representation, in half the memory.
        pair_dtype = self.options.dtype
        prev = {"prev_msa_first_row": torch.zeros(num_res, a.msa_channel),
                "prev_pair": torch.zeros(num_res, num_res, a.pair_channel, dtype=pair_dtype),
                "prev_pos": torch.zeros(num_res, rc.atom_type_num, 3)}
        recycles = []
        for i in range(num_recycle + 1):
            batch = pass_batch(i)
            # The previous pass's outputs (its fp32 pair, distogram and PAE logits: each L²-sized)
            # are not needed while this pass runs; only `prev` is.
            ret = out = None
            # The recycled pair is freed once embedded: the stacks run without it (L² · c_z).
            ret = self.alphafold_iteration(batch, prev, consume_prev=True)
            # The trunk's pair is the next pass's recycled pair as it is (no copy).
            new_prev = {"prev_msa_first_row": ret["representations"]["msa_first_row"],
                        "prev_pair": ret["representations"]["pair"].to(pair_dtype),
                        "prev_pos": ret["structure_module"]["final_atom_positions"]}
            blocks = None
            if self.options.compact_outputs:
                # Long sequences: no pair or MSA representation in the output (their fp32 copies), and
                # PAE and pTM from the PAE logits a block of rows at a time (see Options.compact_outputs).
                representations = {k: v for k, v in ret["representations"].items() if k not in ("pair", "msa")}
                if "predicted_aligned_error" in ret:
                    blocks = ((rows, logits.numpy()) for rows, logits in
                              self.alphafold_iteration.predicted_aligned_error_head.logit_blocks(ret["representations"]))
                ret["representations"] = representations
            if not return_representations:  # (the PAE blocks above hold the trunk's pair they read)
                ret = {k: v for k, v in ret.items() if k != "representations"}
            out = _to_numpy(ret)
            out.update(confidence.confidence_metrics(out, residue_weights=seq_mask, asym_id=asym_id,
                                                     aligned_error_blocks=blocks))
            out["tol"] = _ca_distance_change(prev["prev_pos"].numpy(), new_prev["prev_pos"].numpy(), seq_mask)
            out["num_recycles"] = np.asarray(i)
            prev = new_prev
            if return_recycles:
                recycles.append(out)
            if i > 0 and early_stop_tolerance > 0 and out["tol"] < early_stop_tolerance:
                break
        if return_recycles:
            out = dict(out, recycles=recycles)
        return out


def _check_axes(name: str, shape: tuple[int, ...], dims: tuple[str | int, ...],
               sizes: dict[str, tuple[int, str]]) -> None:
    """InputError unless the trailing axes of ``shape`` fit ``dims``: an int is a fixed size, a name
    (L, S, ...) must agree with the size that ``sizes`` (name -> (size, feature)) recorded first."""
    for dim, size in zip(dims, shape[len(shape) - len(dims):]):
        if isinstance(dim, int):
            if size != dim:
                raise InputError(f"feature {name} has shape {shape}; axis {dim!r} must be {dim}")
        elif dim in sizes and sizes[dim][0] != size:
            raise InputError(f"feature {name} has shape {shape}: its {dim} axis is {size}, but "
                             f"{sizes[dim][1]} says {sizes[dim][0]}")
        else:
            sizes.setdefault(dim, (size, name))


def _read_with_cache(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    path = Path(path)
    if cache_dir is None or path.suffix != ".npz" or not path.is_file():
        return read_params(path)
    stat = path.stat()
    cached = Path(cache_dir) / f"{path.stem}.{stat.st_size}.{stat.st_mtime_ns}.safetensors"
    if cached.is_file():
        return read_params(cached)
    flat = read_params(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(cached, flat)
    return flat


# Row-indexed features of the extra MSA and of the templates (leading axis: rows).
_ROW_GROUPS = (("extra_msa", "extra_msa_mask", "extra_has_deletion", "extra_deletion_value"),
               ("template_aatype", "template_all_atom_positions", "template_all_atom_masks",
                "template_pseudo_beta", "template_pseudo_beta_mask", "template_mask"))


def _without_masked_rows(batch: dict[str, torch.Tensor], templates: bool = True) -> dict[str, torch.Tensor]:
    """Drop the MSA, extra-MSA and template rows that are masked out entirely.

    AlphaFold2 pads these to fixed sizes (508/5120/4 rows) with fully masked rows, which add nothing
    to its result: attention masks them as keys, the outer product mean masks them, and what they
    compute for themselves is read by no unmasked row. So they are not computed. The first MSA row
    (the query) is always kept; ``msa_rows`` records which main-MSA rows were kept, so that
    :func:`_restore_msa_rows` can give the per-row outputs their full shape again. A template is
    dropped only when both its mask and its atom masks are zero: its torsion-angle MSA rows read
    the atom masks. With ``templates=False`` (the multimer, which averages over every template slot
    and embeds even an empty template's residue types) no template is dropped.
    """
    msa_keep = batch["msa_mask"].any(dim=1)
    msa_keep[0] = True
    batch["msa_rows"] = torch.nonzero(msa_keep)[:, 0]
    batch["num_msa_rows"] = torch.tensor(msa_keep.shape[0])
    keeps = {"msa_feat": msa_keep, "extra_msa": batch["extra_msa_mask"].any(dim=1)}
    if templates and "template_mask" in batch:
        keeps["template_aatype"] = (batch["template_mask"] != 0) | batch["template_all_atom_masks"].flatten(1).any(1)
    for group in (("msa_feat", "msa_mask"),) + _ROW_GROUPS:
        if group[0] in keeps and not bool(keeps[group[0]].all()):
            for name in group:
                batch[name] = batch[name][keeps[group[0]]]
    return batch


def _restore_msa_rows(msa: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``msa`` representation with the rows that :func:`_without_masked_rows` dropped.

    DISCREPANCY: the dropped rows are fully masked padding, for which AlphaFold2 computes values
    that nothing reads; here their representation is zero (and so their masked-MSA logits are
    the head's bias).
    """
    if "msa_rows" not in batch or batch["msa_rows"].shape[0] == int(batch["num_msa_rows"]):
        return msa
    full = msa.new_zeros((int(batch["num_msa_rows"]), *msa.shape[1:]))
    full[batch["msa_rows"]] = msa
    return full


def _at_least_one_row(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give an empty extra MSA or template set one fully masked row.

    A target with a single-sequence MSA has no extra-MSA rows once the clusters are sampled, and a
    target without template hits has no templates. AlphaFold2 pads both with masked rows, which add
    nothing to its result (tests/test_model_whole.py checks padded == unpadded); one such row keeps
    every reduction and reshape well defined without changing the answer.
    """
    for group in _ROW_GROUPS:
        if group[0] in batch and batch[group[0]].shape[0] == 0:
            for name in group:
                value = batch[name]
                batch[name] = torch.zeros((1, *value.shape[1:]), dtype=value.dtype)
    return batch


def _to_numpy(tree):
    """Numpy arrays of a tree of tensors; bf16 ones (the trunk's pair and MSA) as fp32 copies."""
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    tree = tree.detach().cpu()
    return (tree.float() if tree.dtype == torch.bfloat16 else tree).numpy()


def _ca_distance_change(prev_pos: np.ndarray, pos: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RMS change (Å) of the Cα distance matrix between two passes, over present residue pairs."""
    ca = rc.atom_order["CA"]

    def dist(x):
        return np.sqrt(((x[:, None, ca] - x[None, :, ca]) ** 2).sum(-1))

    mask_2d = mask[:, None] * mask[None, :]
    return np.sqrt(((dist(prev_pos) - dist(pos)) ** 2 * mask_2d).sum() / mask_2d.sum() + 1e-8)


# A tensor that only the multimer's parameter files hold (its relative position encoding).
_MULTIMER_KEY = f"alphafold/alphafold_iteration/evoformer/{_CHAIN_RELPOS}/"


def _guess_preset_hint(flat: dict) -> str:
    has_pae = any(k.startswith("alphafold/alphafold_iteration/predicted_aligned_error_head/") for k in flat)
    has_templates = any("/template_embedding/" in k for k in flat)
    return (f"The file {'has' if has_pae else 'lacks'} the predicted-aligned-error (pTM) head and "
            f"{'has' if has_templates else 'lacks'} template embedding weights.")

