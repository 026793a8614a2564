"""DeepMind's JAX AlphaFold configured as our oracle (docs/reference.md), in one place.

The reference package (the `reference` extra: alphafold-colabfold, jax, haiku) defaults to
ColabFold's settings: a bf16 trunk, fused triangle-multiplication weights, zero-initialised final
layers, the pallas kernels. DeepMind's released monomer is fp32 with unfused weights, as are
AlphaFold-Multimer v1 and v2; only v3 is fused. The model tests (tests/reference.py), `af2cpu bench`
and `af2cpu bench --batch` all build the reference's config here. Importing this module does not
need the extra; calling reference_config does.
"""

from __future__ import annotations


def fused_triangle_weights(preset: str) -> bool:
    """Whether DeepMind's config fuses the triangle multiplications' projections for ``preset``: only
    for AlphaFold-Multimer v3 (``CONFIG_MULTIMER``); the monomer (``CONFIG``) and multimer v1 and v2
    (``common_updates``) are unfused, as their files. The packaged reference fuses everything by
    default, so the oracle states DeepMind's choice itself rather than read af2cpu's presets."""
    return preset.endswith("_multimer_v3")


def reference_params(flat, preset: str):
    """Official flat params as the reference's haiku tree for ``preset``: the triangle projections
    fused or split as :func:`reference_config` configures them, whatever the file's layout."""
    from alphafold.model import utils as af_utils  # deferred: an optional dependency (the reference extra)

    return af_utils.flat_params_to_haiku(dict(flat), fuse=fused_triangle_weights(preset))


def reference_config(preset: str = "model_1_ptm", num_recycle: int = 3, subbatch_size: int | None = None,
                     evoformer_blocks: int | None = None):
    """The reference's model config for ``preset`` as DeepMind's fp32 monomer, or for a multimer
    preset as DeepMind's multimer in fp32 without randomness: BERT masking off (``replace_fraction``
    0); with at most ``num_msa`` real MSA rows its in-network sampling only permutes rows, to which
    the outputs are invariant (docs/reference.md). Triangle weights fused for multimer v3 only
    (:func:`fused_triangle_weights`); feed it params through :func:`reference_params`.

    ``subbatch_size`` None computes attention unbatched (exact comparisons); DeepMind's own runs
    use 4, which the AlphaFold2-style batch benchmark keeps, since without it the extra-MSA
    attention over 5120 padded rows needs tens of GB at a few hundred residues.
    ``evoformer_blocks`` shortens the stack for quick benchmarks.
    """
    from alphafold.model import config as af_config  # deferred: an optional dependency (the reference extra)

    cfg = af_config.model_config(preset)
    gc = cfg.model.global_config
    gc.zero_init = False
    gc.bfloat16 = False
    gc.bfloat16_output = False
    gc.subbatch_size = subbatch_size
    gc.use_pallas = False
    evo = cfg.model.embeddings_and_evoformer
    for stack in (evo.evoformer, evo.template.template_pair_stack):
        stack.triangle_multiplication_outgoing.fuse_projection_weights = fused_triangle_weights(preset)
        stack.triangle_multiplication_incoming.fuse_projection_weights = fused_triangle_weights(preset)
    if evoformer_blocks is not None:
        evo.evoformer_num_block = evoformer_blocks
    cfg.model.calc_extended_ptm = False
    cfg.model.use_probs_extended = False
    cfg.model.num_recycle = num_recycle
    if "multimer" in preset:
        evo.masked_msa.replace_fraction = 0.0
        cfg.model.recycle_early_stop_tolerance = 0.0
    else:
        cfg.data.common.num_recycle = num_recycle
        cfg.data.eval.num_ensemble = 1
    return cfg


def available() -> bool:
    """Whether the reference (the `reference` extra) can be imported; says so on stdout when not."""
    try:
        import alphafold.data.pipeline  # deferred: an optional dependency, probed here
        import alphafold.model.modules  # noqa: F401
        import haiku  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        print("the reference (alphafold, jax, haiku) is not installed: timing af2cpu only "
              "(pip install 'af2cpu[reference]')")
        return False
    return True
