"""The preset's architecture is the whole tree of the network's sizes: its defaults are DeepMind's
monomer config, and a network of other sizes is built, saved, loaded and run from its tree alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from af2cpu.common import residue_constants as rc
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.params import random_params, write_npz
from af2cpu.model.presets import (
    Architecture,
    DistanceBins,
    EvoformerStackConfig,
    HeadsConfig,
    StructureModuleConfig,
    TemplateConfig,
    get_preset,
)

# model_1_ptm (templates, torsion rows, pTM head) with every size of the tree changed that the
# input features leave free: 2 Evoformer blocks of 64 MSA channels, a 32-channel pair, and
# smaller extra-MSA stack, template stack, structure module and heads.
VARIANT = dataclasses.replace(get_preset("model_1_ptm"), name="model_1_ptm_small", architecture=Architecture(
    pair_channel=32,
    seq_channel=48,
    max_relative_feature=16,
    prev_pos=DistanceBins(num_bins=9, min_bin=3.25, max_bin=20.75),
    evoformer=EvoformerStackConfig(num_block=2, msa_channel=64, msa_num_head=4, msa_transition_factor=2,
                                   num_outer_channel=16, num_intermediate_channel=24, triangle_num_head=2,
                                   pair_transition_factor=2),
    extra_msa=EvoformerStackConfig(num_block=1, msa_channel=16, global_column_attention=True, msa_num_head=2,
                                   num_outer_channel=8, num_intermediate_channel=24, triangle_num_head=2),
    template=TemplateConfig(num_channel=16, num_block=1, triangle_num_head=2, num_intermediate_channel=8,
                            attention_num_head=2, attention_key_dim=16, attention_value_dim=8,
                            dgram_features=DistanceBins(num_bins=20, min_bin=3.25, max_bin=50.75)),
    structure_module=StructureModuleConfig(num_layer=3, num_channel=40, num_head=4, num_scalar_qk=8,
                                           num_scalar_v=8, num_point_qk=2, num_point_v=4,
                                           num_layer_in_transition=2, sidechain_num_channel=32,
                                           sidechain_num_residual_block=1),
    heads=HeadsConfig(plddt_num_bins=20, plddt_num_channels=32, distogram_num_bins=16, pae_num_bins=24),
))


def test_default_architecture_is_deepminds_monomer_config():
    config = pytest.importorskip("alphafold.model.config", reason="needs the `reference` extra").CONFIG.model
    evo, heads = config.embeddings_and_evoformer, config.heads
    e, t, sm = evo.evoformer, evo.template, heads.structure_module
    pair_stack = t.template_pair_stack
    # One field states what DeepMind states twice, equal there: the heads of both MSA attentions, the
    # channels of both triangle multiplications and the heads of both triangle attentions.
    for a, b in ((e.msa_row_attention_with_pair_bias, e.msa_column_attention),
                 (e.triangle_attention_starting_node, e.triangle_attention_ending_node),
                 (pair_stack.triangle_attention_starting_node, pair_stack.triangle_attention_ending_node)):
        assert a.num_head == b.num_head
    for a, b in ((e.triangle_multiplication_outgoing, e.triangle_multiplication_incoming),
                 (pair_stack.triangle_multiplication_outgoing, pair_stack.triangle_multiplication_incoming)):
        assert a.num_intermediate_channel == b.num_intermediate_channel

    def stack(num_block: int, msa_channel: int, global_column_attention: bool) -> EvoformerStackConfig:
        # Both Evoformer-like stacks take DeepMind's one `evoformer` block config.
        return EvoformerStackConfig(
            num_block=num_block, msa_channel=msa_channel, global_column_attention=global_column_attention,
            msa_num_head=e.msa_row_attention_with_pair_bias.num_head,
            msa_transition_factor=e.msa_transition.num_intermediate_factor,
            num_outer_channel=e.outer_product_mean.num_outer_channel,
            num_intermediate_channel=e.triangle_multiplication_outgoing.num_intermediate_channel,
            triangle_num_head=e.triangle_attention_starting_node.num_head,
            pair_transition_factor=e.pair_transition.num_intermediate_factor)

    deepmind = Architecture(
        pair_channel=evo.pair_channel, seq_channel=evo.seq_channel,
        max_relative_feature=evo.max_relative_feature, prev_pos=DistanceBins(**evo.prev_pos),
        evoformer=stack(evo.evoformer_num_block, evo.msa_channel, False),
        extra_msa=stack(evo.extra_msa_stack_num_block, evo.extra_msa_channel, True),
        template=TemplateConfig(
            num_channel=pair_stack.triangle_attention_ending_node.value_dim, num_block=pair_stack.num_block,
            triangle_num_head=pair_stack.triangle_attention_starting_node.num_head,
            num_intermediate_channel=pair_stack.triangle_multiplication_outgoing.num_intermediate_channel,
            pair_transition_factor=pair_stack.pair_transition.num_intermediate_factor,
            attention_num_head=t.attention.num_head, attention_key_dim=t.attention.key_dim,
            attention_value_dim=t.attention.value_dim, dgram_features=DistanceBins(**t.dgram_features)),
        structure_module=StructureModuleConfig(
            num_layer=sm.num_layer, num_channel=sm.num_channel, num_head=sm.num_head,
            num_scalar_qk=sm.num_scalar_qk, num_scalar_v=sm.num_scalar_v, num_point_qk=sm.num_point_qk,
            num_point_v=sm.num_point_v, num_layer_in_transition=sm.num_layer_in_transition,
            position_scale=sm.position_scale, sidechain_num_channel=sm.sidechain.num_channel,
            sidechain_num_residual_block=sm.sidechain.num_residual_block),
        heads=HeadsConfig(
            plddt_num_bins=heads.predicted_lddt.num_bins,
            plddt_num_channels=heads.predicted_lddt.num_channels,
            distogram_first_break=heads.distogram.first_break,
            distogram_last_break=heads.distogram.last_break,
            distogram_num_bins=heads.distogram.num_bins, masked_msa_num_output=heads.masked_msa.num_output,
            pae_max_error_bin=heads.predicted_aligned_error.max_error_bin,
            pae_num_bins=heads.predicted_aligned_error.num_bins),
    )
    assert Architecture() == deepmind
    assert Architecture().msa_channel == evo.msa_channel
    assert Architecture().template.num_pair_features == 88  # the template pair features of Suppl. Table 1


def _variant_features(num_res: int = 24) -> dict[str, np.ndarray]:
    """One pass of the variant's processed features: the first residues of HBB_HUMAN with its real
    MSA against 45 globins, and one template with random coordinates (so the template stack runs)."""
    from af2cpu.preprocessing.features import msa_features, sequence_features
    from af2cpu.preprocessing.input_pipeline import PipelineSettings, process_features
    from af2cpu.preprocessing.parsers import Msa, read_stockholm
    from af2cpu.preprocessing.templates import empty_template_features

    sto = Path(__file__).parent / "data" / "preprocessing" / "stockholm" / "hbb_vs_globins45.sto"
    msa = read_stockholm(sto)
    msa = Msa([s[:num_res] for s in msa.sequences], [d[:num_res] for d in msa.deletion_matrix],
              msa.descriptions)
    raw = {**sequence_features(msa.sequences[0], "HBB_HUMAN"), **msa_features([msa]),
           **empty_template_features(num_res)}
    settings = PipelineSettings.from_preset(VARIANT, num_recycle=1, num_msa_clusters=8, max_extra_msa=12)
    features = process_features(raw, settings, seed=0)
    positions = np.random.default_rng(1).normal(scale=8.0, size=(num_res, rc.atom_type_num, 3))
    features["template_aatype"][:, 0] = features["aatype"][0]
    features["template_all_atom_positions"][:, 0] = positions
    features["template_all_atom_masks"][:, 0] = features["atom37_atom_exists"][0]
    features["template_pseudo_beta"][:, 0] = positions[:, rc.atom_order["CA"]]
    features["template_pseudo_beta_mask"][:, 0] = 1.0
    features["template_mask"][:, 0] = 1.0
    return features


def test_a_variant_architecture_loads_its_own_parameters_and_predicts(tmp_path):
    a = VARIANT.architecture
    path = tmp_path / "params_model_1_ptm_small.npz"
    write_npz(path, random_params(AlphaFold(VARIANT), seed=5))
    model = AlphaFold.from_params(path, preset=VARIANT)  # every key of the file used, every parameter filled
    features = _variant_features()
    num_res, num_seq = features["aatype"].shape[1], features["msa_feat"].shape[1]
    out = model.predict(features, num_recycle=1)
    shapes = {
        "single": (out["representations"]["single"].shape, (num_res, a.seq_channel)),
        "pair": (out["representations"]["pair"].shape, (num_res, num_res, a.pair_channel)),
        "msa": (out["representations"]["msa"].shape, (num_seq, num_res, a.msa_channel)),
        "structure_module": (out["representations"]["structure_module"].shape,
                             (num_res, a.structure_module.num_channel)),
        "traj": (out["structure_module"]["traj"].shape, (a.structure_module.num_layer, num_res, 7)),
        "distogram": (out["distogram"]["logits"].shape, (num_res, num_res, a.heads.distogram_num_bins)),
        "pLDDT": (out["predicted_lddt"]["logits"].shape, (num_res, a.heads.plddt_num_bins)),
        "PAE": (out["aligned_confidence_probs"].shape, (num_res, num_res, a.heads.pae_num_bins)),
        "masked MSA": (out["masked_msa"]["logits"].shape, (num_seq, num_res, a.heads.masked_msa_num_output)),
    }
    assert {k: got for k, (got, _) in shapes.items()} == {k: want for k, (_, want) in shapes.items()}
    for value in (out["structure_module"]["final_atom_positions"], out["plddt"],
                  out["predicted_aligned_error"], out["ptm"], out["representations"]["pair"]):
        assert np.isfinite(value).all()

