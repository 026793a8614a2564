"""The trunk's embeddings, computed a block of rows at a time (EmbeddingsAndEvoformer._embed), equal
the embedders' whole-tensor results: exactly in fp32, and as their one rounding to bf16 in bf16 runs.

Fidelity of the embedders themselves against DeepMind's model is tested in
tests/test_model_trunk.py (test_embeddings_and_evoformer_match_reference); these tests pin the
blocking, which only shows at lengths where a block holds fewer rows than the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from af2cpu.model import options as model_options
from af2cpu.model.alphafold import EmbeddingsAndEvoformer
from af2cpu.model.options import Options
from af2cpu.model.params import load_params, random_params
from af2cpu.model.presets import get_preset

L, S, SE = 23, 5, 7


@pytest.fixture(scope="module")
def trunk_and_inputs():
    trunk = EmbeddingsAndEvoformer(get_preset("model_1_ptm").with_blocks(evoformer=1))
    load_params(trunk, random_params(trunk, seed=3, root="evoformer"), root="evoformer")
    rng = np.random.default_rng(0)
    aatype = rng.integers(0, 20, L)
    batch = {
        "aatype": torch.from_numpy(aatype),
        "target_feat": torch.nn.functional.one_hot(torch.from_numpy(aatype + 1), 22).float(),
        "msa_feat": torch.from_numpy(rng.random((S, L, 49)).astype(np.float32)),
        # a gap in the numbering: relative positions are clipped, not consecutive
        "residue_index": torch.from_numpy(np.r_[np.arange(12), np.arange(60, 60 + L - 12)]),
        "extra_msa": torch.from_numpy(rng.integers(0, 23, (SE, L))),
        "extra_has_deletion": torch.from_numpy((rng.random((SE, L)) > 0.8).astype(np.float32)),
        "extra_deletion_value": torch.from_numpy(rng.random((SE, L)).astype(np.float32)),
    }
    prev = {"prev_pos": torch.from_numpy((10 * rng.standard_normal((L, 37, 3))).astype(np.float32)),
            "prev_msa_first_row": torch.from_numpy(rng.standard_normal((L, 256)).astype(np.float32)),
            "prev_pair": torch.from_numpy(rng.standard_normal((L, L, 128)).astype(np.float32))}
    return trunk, batch, prev


def _whole(trunk, batch, prev):
    """The embeddings as whole tensors, straight from the embedders' forward (fp32)."""
    msa, pair = trunk.input_embedder(batch["target_feat"], batch["msa_feat"])
    first_row, pair_update = trunk.recycling_embedder(batch["aatype"], prev["prev_pos"],
                                                      prev["prev_msa_first_row"], prev["prev_pair"])
    msa = torch.cat([msa[:1] + first_row, msa[1:]])
    pair = pair + pair_update + trunk.relative_position(batch["residue_index"])
    extra = trunk.extra_msa_embedder(batch["extra_msa"], batch["extra_has_deletion"], batch["extra_deletion_value"])
    return msa, pair, extra


@pytest.mark.parametrize("block_bytes", [1, 3 * L * 128 * 4, model_options.EMBEDDING_BLOCK_BYTES],
                         ids=["one-row-blocks", "three-row-blocks", "default"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_blocked_embeddings_equal_whole_tensor_embeddings(trunk_and_inputs, monkeypatch, block_bytes, precision):
    trunk, batch, prev = trunk_and_inputs
    monkeypatch.setattr(model_options, "EMBEDDING_BLOCK_BYTES", block_bytes)
    dtype = Options(precision=precision).dtype
    with torch.no_grad():
        want = _whole(trunk, batch, prev)
        pair = trunk._embed_pair(batch, prev, dtype)
        msa, extra = trunk._embed_msa(batch, prev, dtype), trunk._embed_extra_msa(batch, dtype)
        got = msa, pair, extra
    for name, w, g in zip(("msa", "pair", "extra"), want, got):
        assert g.dtype == dtype and g.shape == w.shape, name
        # fp32: the same operations row by row, so the same numbers; bf16: one rounding of them.
        assert torch.equal(g, w.to(dtype)), f"{name}: max difference {(g.float() - w.to(dtype).float()).abs().max()}"


def test_relative_position_gather_equals_one_hot_projection(trunk_and_inputs):
    """The relative-position encoding picks weight rows instead of projecting one-hot vectors; the
    numbers are the same (one weight plus the bias, one rounding either way)."""
    trunk, batch, _ = trunk_and_inputs
    relpos = trunk.relative_position
    k = relpos.max_relative_feature
    index = batch["residue_index"]
    offset = index[:, None] - index[None, :]
    one_hot = torch.nn.functional.one_hot(torch.clamp(offset + k, 0, 2 * k), 2 * k + 1).float()
    with torch.no_grad():
        assert torch.equal(relpos(index), relpos.pair_activiations(one_hot))
        assert torch.equal(relpos(index, slice(5, 9)), relpos(index)[5:9])
