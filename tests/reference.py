"""Harness around DeepMind's JAX AlphaFold (the `reference` extra), configured as REFERENCE.md says.

Shared by the model tests: build a reference config that is DeepMind's fp32 monomer (no zero-init,
no bf16, no sub-batching, unfused triangle weights), run any haiku module on parameters given in
the official flat format, run the whole monomer recycle loop in fp32 ourselves (never
``RunModel.predict``, which casts the recycled state to float16), and make processed features with
the reference's own ``np_example_to_features`` from raw features.

Importing this module needs jax/haiku/alphafold; tests import it through
``pytest.importorskip("alphafold")`` only where the extra is optional, CI has it installed.
"""

from __future__ import annotations

import copy

import haiku as hk
import jax
import numpy as np

from alphafold.model import config as af_config
from alphafold.model import features as af_features
from alphafold.model import modules as af_modules
from alphafold.model import utils as af_utils

jax.config.update("jax_enable_x64", False)


def reference_config(preset: str = "model_1_ptm", num_recycle: int = 3):
    """The reference's model config set up as DeepMind's fp32 monomer (REFERENCE.md)."""
    cfg = af_config.model_config(preset)
    gc = cfg.model.global_config
    gc.zero_init = False
    gc.bfloat16 = False
    gc.bfloat16_output = False
    gc.subbatch_size = None
    gc.use_pallas = False
    evo = cfg.model.embeddings_and_evoformer
    for stack in (evo.evoformer, evo.template.template_pair_stack):
        stack.triangle_multiplication_outgoing.fuse_projection_weights = False
        stack.triangle_multiplication_incoming.fuse_projection_weights = False
    cfg.model.calc_extended_ptm = False
    cfg.model.use_probs_extended = False
    cfg.model.num_recycle = num_recycle
    cfg.data.common.num_recycle = num_recycle
    cfg.data.eval.num_ensemble = 1
    return cfg


def to_haiku(flat: dict[str, np.ndarray]):
    """Official flat params -> haiku params (unfused triangle weights, as the monomer files are)."""
    return af_utils.flat_params_to_haiku(dict(flat), fuse=False)


def apply(fn, flat: dict[str, np.ndarray], *args):
    """Run ``fn(*args)`` (which builds haiku modules) under hk.transform with the given params.

    Returns the result as numpy arrays (same nesting)."""
    transformed = hk.transform(fn)
    out = jax.jit(transformed.apply)(to_haiku(flat), jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map(np.asarray, out)


def make_processed_features(raw: dict[str, np.ndarray], preset: str, num_recycle: int = 3,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """The reference's feature processing (clustering, extra MSA, masks) of raw features."""
    cfg = reference_config(preset, num_recycle)
    return dict(af_features.np_example_to_features(copy.deepcopy(raw), cfg, random_seed=seed))


def run_alphafold(feats: dict[str, np.ndarray], flat: dict[str, np.ndarray], preset: str,
                  num_recycle: int = 3) -> list[dict]:
    """The reference monomer, our own fp32 recycle loop: one output dict per pass (numpy).

    Each pass ``i`` reads ``feats[k][i]`` (the processed features carry a leading recycle axis)
    and the previous pass's fp32 ``prev`` state, through ``modules.AlphaFold_noE``.
    """
    cfg = reference_config(preset, num_recycle)

    def forward(batch, prev):
        model = af_modules.AlphaFold_noE(cfg.model)
        return model({**batch, "prev": prev}, is_training=False, return_representations=True)

    transformed = hk.transform(forward)
    params = to_haiku(flat)
    step = jax.jit(transformed.apply)
    num_res = feats["aatype"].shape[1]
    prev = {"prev_msa_first_row": np.zeros([num_res, 256], np.float32),
            "prev_pair": np.zeros([num_res, num_res, 128], np.float32),
            "prev_pos": np.zeros([num_res, 37, 3], np.float32)}
    outputs = []
    for i in range(num_recycle + 1):
        batch = {k: v[i] for k, v in feats.items()}
        out = step(params, jax.random.PRNGKey(0), batch, prev)
        out = jax.tree_util.tree_map(np.asarray, out)
        prev = {k: v.astype(np.float32) for k, v in out["prev"].items()}
        outputs.append(out)
    return outputs
