"""The ten monomer presets of AlphaFold2 2.3 (Jumper et al. 2021, Suppl. Table 5) and the fifteen
AlphaFold-Multimer presets (Evans et al. 2022): five each of v3 (DeepMind's 2.3 weights), v2 (2.2) and
v1 (2.1), as typed configs.

A preset's :class:`Architecture` is the whole tree of the network's sizes: every module (and so the
parameter files, whose tensors are the modules') and the memory planner (:mod:`af2cpu.model.memory`)
read their sizes from it, and nothing else states them. The monomer presets share one architecture;
they differ in whether templates are embedded (with their torsion-angle MSA rows), how many extra-MSA
rows and MSA clusters the input pipeline keeps, and whether the predicted-aligned-error (pTM) head
exists. The values are those of DeepMind's ``alphafold/model/config.py`` (``CONFIG`` and
``CONFIG_DIFFS``); a field has DeepMind's name where DeepMind names it (the comment gives its path
under ``model.embeddings_and_evoformer`` or ``model.heads``). The multimer's architecture differs in
fields of the same tree (:func:`_multimer_architecture`: chain-relative positions, the outer product
mean first, the multimer template embedding and structure module); its values are DeepMind's
``CONFIG_MULTIMER``. Its versions differ only as :func:`_multimer` says (DeepMind's ``common_updates``:
v3's triangle multiplications fused, v1's and v2's not, and the sample sizes and recycling).
Kept free of torch: the CLI and the memory planner read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from af2cpu.common import residue_constants as rc
from af2cpu.errors import ConfigError


@dataclass(frozen=True)
class DistanceBins:
    """One-hot distance bins (``dgram_from_positions``): ``num_bins`` lower edges from ``min_bin`` to
    ``max_bin`` Å, the last bin open-ended."""

    num_bins: int
    min_bin: float
    max_bin: float


@dataclass(frozen=True)
class EvoformerStackConfig:
    """An Evoformer-like stack: Alg. 6 'EvoformerStack', or Alg. 18 'ExtraMsaStack' with
    ``global_column_attention``. The per-module sizes are DeepMind's ``evoformer`` settings, which
    both stacks share; the depth and the MSA width are each stack's own."""

    num_block: int  # evoformer_num_block, extra_msa_stack_num_block
    msa_channel: int  # msa_channel, extra_msa_channel
    # Alg. 19 'MSAColumnGlobalAttention' instead of Alg. 8 (DeepMind's EvoformerIteration(is_extra_msa)).
    global_column_attention: bool = False
    msa_num_head: int = 8  # evoformer.msa_row_attention_with_pair_bias.num_head and msa_column_attention's
    msa_transition_factor: int = 4  # evoformer.msa_transition.num_intermediate_factor
    num_outer_channel: int = 32  # evoformer.outer_product_mean.num_outer_channel
    num_intermediate_channel: int = 128  # evoformer.triangle_multiplication_*.num_intermediate_channel
    triangle_num_head: int = 4  # evoformer.triangle_attention_*.num_head
    pair_transition_factor: int = 4  # evoformer.pair_transition.num_intermediate_factor
    # evoformer.outer_product_mean.first: the multimer updates the pair from the MSA before the MSA track.
    outer_product_mean_first: bool = False
    # evoformer.triangle_multiplication_*.fuse_projection_weights: one `projection` and one `gate`
    # layer of 2c outputs (left half, right half) instead of four (multimer v3's parameter files).
    fuse_projection_weights: bool = False


@dataclass(frozen=True)
class TemplateConfig:
    """The template embedding (Suppl. 1.7.1): the template pair stack (Alg. 16) and the point-wise
    attention into the pair representation (Alg. 17)."""

    # c_t; DeepMind takes it from template_pair_stack.triangle_attention_*.value_dim.
    num_channel: int = 64
    num_block: int = 2  # template.template_pair_stack.num_block
    triangle_num_head: int = 4  # template.template_pair_stack.triangle_attention_*.num_head
    num_intermediate_channel: int = 64  # template.template_pair_stack.triangle_multiplication_*
    pair_transition_factor: int = 2  # template.template_pair_stack.pair_transition.num_intermediate_factor
    attention_num_head: int = 4  # template.attention.num_head
    attention_key_dim: int = 64  # template.attention.key_dim (all heads together)
    attention_value_dim: int = 64  # template.attention.value_dim (all heads together)
    dgram_features: DistanceBins = DistanceBins(num_bins=39, min_bin=3.25, max_bin=50.75)
    # template.template_pair_stack.triangle_multiplication_*.fuse_projection_weights
    fuse_projection_weights: bool = False
    # DeepMind's modules_multimer.TemplateEmbedding: per-feature input layers (with the unit vectors
    # and the layer-normed query pair), triangle multiplications first in the pair blocks, masks x
    # intra-chain pairs, the templates averaged instead of attended (no point-wise attention).
    multimer: bool = False

    @property
    def num_pair_features(self) -> int:
        """Width of one template's pair features (Suppl. Table 1): the distogram, the pseudo-β mask,
        the residue types of both residues (one-hot with X and gap), the unit vector (3) and the
        backbone mask."""
        return self.dgram_features.num_bins + 1 + 2 * len(rc.restypes_with_x_and_gap) + 3 + 1


@dataclass(frozen=True)
class StructureModuleConfig:
    """The structure module (Alg. 20; ``heads.structure_module``); its input channels are the
    architecture's ``seq_channel`` and ``pair_channel``."""

    num_layer: int = 8
    num_channel: int = 384
    num_head: int = 12
    num_scalar_qk: int = 16
    num_scalar_v: int = 16
    num_point_qk: int = 4
    num_point_v: int = 8
    num_layer_in_transition: int = 3
    position_scale: float = 10.0
    sidechain_num_channel: int = 128  # sidechain.num_channel
    sidechain_num_residual_block: int = 2  # sidechain.num_residual_block
    # DeepMind's folding_multimer: IPA scalar projections without bias, point projections laid out
    # per head, the backbone update composed after the current frame (QuatRigid), 1e-6 in the norms.
    multimer: bool = False


@dataclass(frozen=True)
class HeadsConfig:
    """Sizes and bins of the output heads (``model.heads``); their input channels come from the
    architecture (pair, MSA, single, and the structure module's ``num_channel`` for pLDDT)."""

    plddt_num_bins: int = 50  # predicted_lddt.num_bins
    plddt_num_channels: int = 128  # predicted_lddt.num_channels
    distogram_first_break: float = 2.3125  # distogram.first_break
    distogram_last_break: float = 21.6875  # distogram.last_break
    distogram_num_bins: int = 64  # distogram.num_bins
    masked_msa_num_output: int = 23  # masked_msa.num_output (the multimer's head has 22)
    pae_max_error_bin: float = 31.0  # predicted_aligned_error.max_error_bin
    pae_num_bins: int = 64  # predicted_aligned_error.num_bins


@dataclass(frozen=True)
class Architecture:
    """Every size of the network (``model.embeddings_and_evoformer`` and ``model.heads``)."""

    pair_channel: int = 128  # pair_channel, c_z
    seq_channel: int = 384  # seq_channel, c_s: the single representation
    max_relative_feature: int = 32  # max_relative_feature (Alg. 4); the multimer's max_relative_idx
    # max_relative_chain: with it, the multimer's chain-relative encoding (asym, entity and sym ids).
    max_relative_chain: int | None = None
    target_feat_dim: int = 22  # width of the target_feat input feature
    msa_feat_dim: int = 49  # width of the msa_feat input feature
    extra_msa_feat_dim: int = 25  # the extra MSA's one-hot residue (23), has_deletion and deletion_value
    prev_pos: DistanceBins = DistanceBins(num_bins=15, min_bin=3.25, max_bin=20.75)  # recycled Cβ (Alg. 32)
    evoformer: EvoformerStackConfig = EvoformerStackConfig(num_block=48, msa_channel=256)
    extra_msa: EvoformerStackConfig = EvoformerStackConfig(num_block=4, msa_channel=64,
                                                           global_column_attention=True)
    template: TemplateConfig = TemplateConfig()
    structure_module: StructureModuleConfig = StructureModuleConfig()
    heads: HeadsConfig = HeadsConfig()

    @property
    def msa_channel(self) -> int:
        """c_m, DeepMind's ``msa_channel``: the MSA representation's width, the Evoformer stack's."""
        return self.evoformer.msa_channel


def _multimer_architecture(fused: bool) -> Architecture:
    """AlphaFold-Multimer's architecture, its triangle multiplications ``fused`` (v3) or not (v1, v2)."""
    return Architecture(
        max_relative_chain=2,
        target_feat_dim=21,
        evoformer=EvoformerStackConfig(num_block=48, msa_channel=256, outer_product_mean_first=True,
                                       fuse_projection_weights=fused),
        extra_msa=EvoformerStackConfig(num_block=4, msa_channel=64, global_column_attention=True,
                                       outer_product_mean_first=True, fuse_projection_weights=fused),
        template=TemplateConfig(fuse_projection_weights=fused, multimer=True),
        structure_module=StructureModuleConfig(position_scale=20.0, multimer=True),
        heads=HeadsConfig(masked_msa_num_output=22),
    )


@dataclass(frozen=True)
class Preset:
    """One model: architecture switches plus the input-pipeline sizes it was trained with.

    For a multimer preset, ``max_msa_clusters``/``num_msa_clusters`` and ``max_extra_msa`` are the
    in-network sample sizes (DeepMind's ``num_msa`` 508 with the 4 template rows, ``num_extra_msa``).
    """

    name: str
    use_templates: bool
    max_extra_msa: int
    reduce_msa_clusters_by_max_templates: bool
    predicted_aligned_error: bool
    max_msa_clusters: int = 512
    max_templates: int = 4
    num_recycle: int = 3
    # AlphaFold2 derives this from `not global_config.zero_init`: False in DeepMind's inference
    # config (undefined template torsions keep what their missing atoms give; for the pre-omega of
    # a residue without a resolved predecessor that is rounding noise, in DeepMind's code as here);
    # True in a reference configured with zero_init=False, as the tests do (docs/reference.md).
    template_torsion_placeholders: bool = False
    architecture: Architecture = Architecture()
    # AlphaFold-Multimer: features of DeepMind's pipeline_multimer, MSA sampled in the network.
    multimer: bool = False
    # embeddings_and_evoformer.masked_msa.replace_fraction: BERT masking of the sampled MSA at
    # inference (multimer; 0 leaves the MSA as it is).
    masked_msa_replace_fraction: float = 0.0
    # model.recycle_early_stop_tolerance (Å): stop recycling once the Cα distances change less
    # (0: always run num_recycle passes).
    recycle_early_stop_tolerance: float = 0.0
    # DeepMind's parameter tarball that holds this preset's file where it is not the one `af2cpu params
    # download` fetches (the multimer v1 and v2 files are only in older releases); None: in that one.
    params_release: str | None = None

    def with_blocks(self, evoformer: int | None = None, extra_msa: int | None = None) -> Preset:
        """This preset with ``evoformer`` Evoformer blocks and ``extra_msa`` extra-MSA blocks where
        given: tests and benchmarks run a few blocks of the same network."""
        a = self.architecture
        if evoformer is not None:
            a = replace(a, evoformer=replace(a.evoformer, num_block=evoformer))
        if extra_msa is not None:
            a = replace(a, extra_msa=replace(a.extra_msa, num_block=extra_msa))
        return replace(self, architecture=a)

    @property
    def embed_torsion_angles(self) -> bool:
        """Template torsion-angle rows are added to the MSA exactly when templates are used."""
        return self.use_templates

    @property
    def num_msa_clusters(self) -> int:
        """MSA cluster rows the pipeline keeps: 508 when 4 template rows are added to the MSA."""
        if self.reduce_msa_clusters_by_max_templates:
            return self.max_msa_clusters - self.max_templates
        return self.max_msa_clusters


def _monomer(i: int, ptm: bool) -> Preset:
    templates = i in (1, 2)
    return Preset(
        name=f"model_{i}{'_ptm' if ptm else ''}",
        use_templates=templates,
        max_extra_msa=5120 if i in (1, 3, 4) else 1024,
        reduce_msa_clusters_by_max_templates=templates,
        predicted_aligned_error=ptm,
    )


# AlphaFold-Multimer's releases of weights: version -> (preset-name suffix, DeepMind's tarball that
# holds the files, None for the one `af2cpu params download` fetches).
_MULTIMER_RELEASES = {
    1: ("", "alphafold_params_2021-10-27.tar (AlphaFold 2.1)"),
    2: ("_v2", "alphafold_params_2022-03-02.tar (AlphaFold 2.2)"),
    3: ("_v3", None),
}


def _multimer(i: int, version: int) -> Preset:
    """AlphaFold-Multimer model ``i`` of ``version`` 1, 2 or 3. v1 and v2 share one architecture and
    differ from v3 as DeepMind's ``config.py`` says (``common_updates``): unfused triangle
    multiplications (their files hold the monomer's four projection layers and its layer-norm names),
    ``num_msa`` 252 (v3 508), ``num_extra_msa`` 1152 for every model (v3 2048 for models 1-3), and 3
    recycles without early stop (AlphaFold 2.2's schedule; v3 up to 20, stopping at 0.5 Å)."""
    suffix, release = _MULTIMER_RELEASES[version]
    v3 = version == 3
    return Preset(
        name=f"model_{i}_multimer{suffix}",
        use_templates=True,
        max_msa_clusters=512 if v3 else 256,  # num_msa 508 or 252, with the 4 template rows
        max_extra_msa=2048 if v3 and i in (1, 2, 3) else 1152,
        reduce_msa_clusters_by_max_templates=True,
        predicted_aligned_error=True,
        num_recycle=20 if v3 else 3,
        architecture=_multimer_architecture(fused=v3),
        multimer=True,
        masked_msa_replace_fraction=0.15,
        recycle_early_stop_tolerance=0.5 if v3 else 0.0,
        params_release=release,
    )


PRESETS: dict[str, Preset] = {p.name: p for p in (
    *(_monomer(i, ptm) for ptm in (False, True) for i in range(1, 6)),
    *(_multimer(i, version) for version in (3, 2, 1) for i in range(1, 6)))}


def families(names) -> str:
    """Preset names shortened for a message: ``model_1_multimer_v2`` ... ``model_5_multimer_v2`` ->
    ``model_1..5_multimer_v2`` (in order of first appearance)."""
    return ", ".join(dict.fromkeys(re.sub(r"^model_[1-5]", "model_1..5", n) for n in names))


def preset_families(multimer: bool) -> str:
    """The presets of one kind, for messages: ``model_1..5, model_1..5_ptm`` or the multimer ones."""
    return families(n for n, p in PRESETS.items() if p.multimer == multimer)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``model_1`` ... ``model_5_ptm``, ``model_1_multimer_v3`` ...
    ``model_5_multimer_v3``, ``model_1_multimer_v2`` ..., ``model_1_multimer`` ... for v1); ConfigError
    otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None
