"""The monomer's template embedding combines its templates one at a time (an online softmax over
templates, af2cpu.model.template.TemplateEmbedding): the same numbers as Alg. 17's attention over
all the templates' embeddings at once, masked slots and the in-place update included."""

import pytest
import torch

from af2cpu.common import residue_constants as rc
from af2cpu.model.attention import mask_to_bias
from af2cpu.model.options import ChunkSizes, Options
from af2cpu.model.presets import TemplateConfig
from af2cpu.model.template import TemplateEmbedding

L, C_Z = 24, 32
CFG = TemplateConfig(num_channel=16, num_intermediate_channel=16, attention_key_dim=16, attention_value_dim=16)
NAMES = ("template_aatype", "template_all_atom_positions", "template_all_atom_masks",
         "template_pseudo_beta", "template_pseudo_beta_mask")


def _module() -> TemplateEmbedding:
    """Every parameter random (zero-initialised output layers would test nothing)."""
    module = TemplateEmbedding(CFG, C_Z)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.endswith("scale") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen) if p.dim() == 1
                    else torch.randn(p.shape, generator=gen) * p.shape[0] ** -0.5)
    return module.eval()


def _templates(template_mask: list[float], seed: int = 1) -> dict[str, torch.Tensor]:
    """Templates along a random walk of ~3.8 Å steps, some atoms missing; every slot has atoms,
    also a masked one (af2cpu keeps such a slot: its template_mask alone masks it)."""
    gen = torch.Generator().manual_seed(seed)
    t = len(template_mask)
    steps = torch.randn(t, L, 3, generator=gen)
    ca = torch.cumsum(3.8 * steps / steps.norm(dim=-1, keepdim=True), dim=1)
    positions = ca[:, :, None, :] + 1.5 * torch.randn(t, L, rc.atom_type_num, 3, generator=gen)
    masks = (torch.rand(t, L, rc.atom_type_num, generator=gen) > 0.1).float()
    beta_mask = (torch.rand(t, L, generator=gen) > 0.1).float()
    return {"template_aatype": torch.randint(0, 22, (t, L), generator=gen),
            "template_all_atom_positions": positions, "template_all_atom_masks": masks,
            "template_pseudo_beta": positions[:, :, rc.atom_order["CB"]], "template_pseudo_beta_mask": beta_mask,
            "template_mask": torch.tensor(template_mask)}


def _direct(module: TemplateEmbedding, pair, batch, mask_2d) -> torch.Tensor:
    """Alg. 17 as written: every slot's embedding (L, L, T, c_t), attention with the mask's bias."""
    embed = module.single_template_embedding
    t = batch["template_mask"].shape[0]
    templates = torch.stack([embed(*(batch[k][i] for k in NAMES), mask_2d, pair.dtype) for i in range(t)], dim=2)
    bias = mask_to_bias(batch["template_mask"].float())[None, None, None, :]
    update = module.attention(pair.reshape(L * L, 1, C_Z), templates.reshape(L * L, t, -1), bias)
    return update.reshape(L, L, C_Z)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 2e-6),  # measured 3.1e-7 (AMX CPU)
                                          (torch.bfloat16, 2e-2)])  # measured 6.7e-3: the attention's bf16 rounding
def test_templates_one_at_a_time_equal_the_attention_over_all(dtype, bound):
    module = _module()
    batch = _templates([1.0, 0.0, 1.0, 1.0])  # slot 1 masked: weight 0, as in the softmax
    gen = torch.Generator().manual_seed(2)
    pair = torch.randn(L, L, C_Z, generator=gen).to(dtype)
    mask_2d = torch.ones(L, L)
    mask_2d[-3:] = mask_2d[:, -3:] = 0.0
    with torch.inference_mode():
        direct = _direct(module, pair, batch, mask_2d)
        streamed = module(pair, batch, mask_2d)
        # Blocks of pair rows (5 rows of 24 a block), the update added into the pair in place.
        module.options = Options(chunks=ChunkSizes(template_attention=5 * L))
        blocked = module(pair, batch, mask_2d)
        in_place = pair.clone()
        returned = module(in_place, batch, mask_2d, out=in_place)
    errors = [_relative(streamed, direct), _relative(blocked, direct)]
    print(f"{dtype}: streamed vs direct relative error {errors}")
    assert max(errors) < bound
    # In place: the same numbers as pair + update (one rounding, in the pair's dtype).
    assert returned is in_place and torch.equal(in_place, pair + blocked)
    if dtype == torch.bfloat16:  # no further from fp32 than the direct bf16 path (measured: equal, 1.9e-2)
        with torch.inference_mode():
            fp32 = _direct(module, pair.float(), batch, mask_2d)
        assert _relative(streamed, fp32) <= 1.25 * _relative(direct, fp32)
    # The masked slot changes nothing, whatever its coordinates.
    moved = dict(batch, template_all_atom_positions=batch["template_all_atom_positions"] * 2.0)
    with torch.inference_mode():
        assert torch.equal(module(pair, moved, mask_2d), streamed)


def test_without_a_real_template_the_pair_is_left_as_it_is():
    module = _module()
    batch = _templates([0.0, 0.0])
    pair = torch.randn(L, L, C_Z)
    with torch.inference_mode():
        update = module(pair, batch, torch.ones(L, L))
        kept = pair.clone()
        module(kept, batch, torch.ones(L, L), out=kept)
    assert torch.equal(update, torch.zeros_like(pair)) and torch.equal(kept, pair)
