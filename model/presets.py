"""The ten monomer presets of AlphaFold2 2.3 (Jumper et al. 2021, Suppl. Table 5) as typed configs.

The presets share one architecture; they differ in whether templates are embedded (with their
torsion-angle MSA rows), how many extra-MSA rows and MSA clusters the input pipeline keeps, and
whether the predicted-aligned-error (pTM) head exists. The values are those of DeepMind's
``alphafold/model/config.py`` (``CONFIG`` and ``CONFIG_DIFFS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from af2cpu.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """Sizes shared by every monomer preset."""

    msa_channel: int = 256
    pair_channel: int = 128
    seq_channel: int = 384
    extra_msa_channel: int = 64
    evoformer_num_block: int = 48
    extra_msa_stack_num_block: int = 4
    template_pair_stack_num_block: int = 2
    template_channel: int = 64
    max_relative_feature: int = 32
    target_feat_dim: int = 22
    msa_feat_dim: int = 49
    extra_msa_feat_dim: int = 25


@dataclass(frozen=True)
class Preset:
    """One monomer model: architecture switches plus the input-pipeline sizes it was trained with."""

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
    # True in a reference configured with zero_init=False, as the tests do (REFERENCE.md).
    template_torsion_placeholders: bool = False
    architecture: Architecture = Architecture()

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


PRESETS: dict[str, Preset] = {p.name: p for p in (_monomer(i, ptm) for ptm in (False, True) for i in range(1, 6))}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``model_1`` ... ``model_5_ptm``); ConfigError otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None
