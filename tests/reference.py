"""Harness around DeepMind's JAX AlphaFold (the `reference` extra), configured as docs/reference.md says.

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
from alphafold.model import features as af_features
from alphafold.model import modules as af_modules
from alphafold.model import utils as af_utils

from af2cpu.bench.reference import reference_config  # the tests use it through this module

jax.config.update("jax_enable_x64", False)


def to_haiku(flat: dict[str, np.ndarray]):
    """Official flat params -> haiku params (unfused triangle weights, as the monomer files are)."""
    return af_utils.flat_params_to_haiku(dict(flat), fuse=False)


def apply(fn, flat: dict[str, np.ndarray], *args):
    """Run ``fn(*args)`` (which builds haiku modules) under hk.transform with the given params.

    Returns the result as numpy arrays (same nesting)."""
    transformed = hk.transform(fn)
    out = jax.jit(transformed.apply)(to_haiku(flat), jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map(np.asarray, out)


def make_processed_features(raw: dict[str, np.ndarray], preset: str, num_recycle: int = 3, seed: int = 0,
                            max_msa_clusters: int | None = None, max_extra_msa: int | None = None,
                            max_templates: int | None = None) -> dict[str, np.ndarray]:
    """The reference's feature processing (clustering, extra MSA, masks) of raw features.

    The size limits default to the preset's; smaller ones keep test inputs small (both models
    read the same arrays, so the limits do not affect the comparison)."""
    cfg = reference_config(preset, num_recycle)
    if max_msa_clusters is not None:
        cfg.data.eval.max_msa_clusters = max_msa_clusters
    if max_extra_msa is not None:
        cfg.data.common.max_extra_msa = max_extra_msa
    if max_templates is not None:
        cfg.data.eval.max_templates = max_templates
    return dict(af_features.np_example_to_features(copy.deepcopy(raw), cfg, random_seed=seed))


def run_alphafold(feats: dict[str, np.ndarray], flat: dict[str, np.ndarray], preset: str,
                  num_recycle: int = 3, evoformer_num_block: int = 48) -> list[dict]:
    """The reference monomer, our own fp32 recycle loop: one output dict per pass (numpy).

    Each pass ``i`` reads ``feats[k][i]`` (the processed features carry a leading recycle axis)
    and the previous pass's fp32 ``prev`` state, through ``modules.AlphaFold_noE``.
    """
    cfg = reference_config(preset, num_recycle)
    cfg.model.embeddings_and_evoformer.evoformer_num_block = evoformer_num_block

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


def real_raw_features(start: int = 20, num_res: int = 40) -> dict[str, np.ndarray]:
    """Raw monomer features from real data, cropped to ``num_res`` residues from ``start``.

    The MSA is jackhmmer's real alignment of HBB_HUMAN against 45 globins
    (tests/data/preprocessing/stockholm/hbb_vs_globins45.sto, 46 rows with their deletion counts);
    the template is the real globin chain 2gtl_A (tests/data/structures/2gtl_A.pdb), its residues
    ``start ...`` placed on the query's: real backbone and side-chain geometry and real unresolved
    atoms, as a template hit gives them. Provenance of both files: the NOTICE.md next to them.
    """
    from pathlib import Path

    from af2cpu.common import protein as af2cpu_protein
    from af2cpu.common import residue_constants as rc
    from af2cpu.preprocessing.parsers import read_stockholm

    data = Path(__file__).parent / "data"
    msa = read_stockholm(data / "preprocessing" / "stockholm" / "hbb_vs_globins45.sto")
    window = slice(start, start + num_res)
    rows = [seq[window] for seq in msa.sequences]
    query = rows[0]
    feats = {
        "aatype": rc.sequence_to_onehot(query, rc.restype_order_with_x, map_unknown_to_x=True)[:, :21].astype(np.int32),
        "between_segment_residues": np.zeros(num_res, np.int32),
        "domain_name": np.array([b"HBB_HUMAN"], dtype=object),
        "residue_index": np.arange(num_res, dtype=np.int32),
        "seq_length": np.full(num_res, num_res, np.int32),
        "sequence": np.array([query.encode()], dtype=object),
        "msa": np.array([[rc.HHBLITS_AA_TO_ID[c.upper()] for c in row] for row in rows], np.int32),
        "deletion_matrix_int": np.array([d[window] for d in msa.deletion_matrix], np.int32),
        "num_alignments": np.full(num_res, len(rows), np.int32),
    }
    templ = af2cpu_protein.from_pdb_string((data / "structures" / "2gtl_A.pdb").read_text())
    t_aatype = np.zeros((1, num_res, 22), np.float32)
    letters = [rc.restypes_with_x[a] for a in templ.aatype[window]]
    t_aatype[0, np.arange(num_res), [rc.HHBLITS_AA_TO_ID[c] for c in letters]] = 1.0
    feats.update({
        "template_aatype": t_aatype,
        "template_all_atom_masks": templ.atom_mask[window][None].astype(np.float32),
        "template_all_atom_positions": templ.atom_positions[window][None].astype(np.float32),
        "template_domain_names": np.array([b"2gtl_A"], dtype=object),
        "template_sum_probs": np.array([[40.0]], np.float32),
    })
    return feats
