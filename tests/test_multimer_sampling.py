"""The multimer's in-network sampling follows DeepMind's rules, and bad multimer examples are refused.

The example is laid out as DeepMind's ``pipeline_multimer`` lays it out, from two real MSAs
(jackhmmer's HBB_HUMAN vs globins, 46 rows, and Pfam's fn3 seed, 98 rows, cut to their first 24 and
16 columns): row 0 the paired query of both chains, then each chain's own rows (the other chain's
columns gaps, bert_mask 0 there), then padding rows (msa_mask 0) up to 160 rows; cluster_bias_mask
on row 0 (paired mode) or on each chain's query row (unpaired layout). Values in AlphaFold's order.

JAX's PRNG and ours differ, so the draws are compared as statistics: every test uses fixed seeds (no
flakiness) and bounds chosen for a false-alarm rate of about 1e-3 or less (written at each bound).
Statistics against DeepMind's own functions run with jax are the tests marked ``reference``.
"""

from __future__ import annotations

import math
import warnings
from itertools import permutations

import numpy as np
import pytest
import torch
from scipy import stats

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError
from af2cpu.model.multimer_sampling import (
    MASK_TOKEN,
    chain_name,
    make_masked_msa,
    make_msa_profile,
    sample_msa,
    sampling_generator,
    validate_multimer_example,
)
from af2cpu.preprocessing import parsers

DATA = "tests/data/preprocessing/stockholm"
LEN_A, LEN_B, ROWS = 24, 16, 160


def _chain_msa(name: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``length`` columns of an MSA where its first row (the query) has a residue."""
    msa = parsers.read_stockholm(f"{DATA}/{name}")
    to_af = np.array(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE)  # Pfam's '.' (insert-state gap) read as a gap
    rows = to_af[np.array([[rc.HHBLITS_AA_TO_ID[c.upper().replace(".", "-")] for c in s] for s in msa.sequences])]
    columns = np.flatnonzero(rows[0] != 21)[:length]
    return rows[:, columns], np.array(msa.deletion_matrix, dtype=np.float32)[:, columns]


def _example(unpaired_queries: bool = False) -> dict[str, np.ndarray]:
    """DeepMind's multimer example layout (numpy, no batch axis) of a two-chain hetero complex."""
    (msa_a, del_a), (msa_b, del_b) = _chain_msa("hbb_vs_globins45.sto", LEN_A), _chain_msa("fn3.sto", LEN_B)
    num_res, gap = LEN_A + LEN_B, 21
    na, nb = len(msa_a) - 1, len(msa_b) - 1
    msa = np.zeros((ROWS, num_res), np.int64)
    deletion = np.zeros((ROWS, num_res), np.float32)
    bert = np.zeros((ROWS, num_res), np.float32)
    msa[0] = np.concatenate([msa_a[0], msa_b[0]])
    deletion[0] = np.concatenate([del_a[0], del_b[0]])
    bert[0] = 1
    msa[1:1 + na] = np.concatenate([msa_a[1:], np.full((na, LEN_B), gap)], axis=1)
    deletion[1:1 + na, :LEN_A] = del_a[1:]
    bert[1:1 + na, :LEN_A] = 1
    msa[1 + na:1 + na + nb] = np.concatenate([np.full((nb, LEN_A), gap), msa_b[1:]], axis=1)
    deletion[1 + na:1 + na + nb, LEN_A:] = del_b[1:]
    bert[1 + na:1 + na + nb, LEN_A:] = 1
    real = 1 + na + nb
    msa_mask = np.zeros((ROWS, num_res), np.float32)
    msa_mask[:real] = 1
    cluster_bias = np.zeros(ROWS)
    cluster_bias[0] = 1
    if unpaired_queries:  # each chain's query row also biased (DeepMind's unpaired layout)
        cluster_bias[1 + na] = 1
    asym = np.repeat([1.0, 2.0], [LEN_A, LEN_B])
    return {
        "aatype": msa[0].copy(), "residue_index": np.concatenate([np.arange(LEN_A), np.arange(LEN_B)]),
        "asym_id": asym, "entity_id": asym.copy(), "sym_id": np.ones(num_res),
        "seq_mask": np.ones(num_res, np.float32), "msa": msa, "deletion_matrix": deletion,
        "msa_mask": msa_mask, "bert_mask": bert, "cluster_bias_mask": cluster_bias,
        "template_aatype": np.zeros((4, num_res), np.int64),
        "template_all_atom_mask": np.zeros((4, num_res, 37), np.float32),
        "template_all_atom_positions": np.zeros((4, num_res, 37, 3), np.float32),
    }


EXAMPLE = _example()
REAL_ROWS = int(EXAMPLE["msa_mask"].any(1).sum())  # 1 + 45 + 97 = 143


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The arrays here are tiny: with 2 threads on a loaded 2-core machine each op waits for the
    other thread (40 passes: 6.7 s with 2 threads, 0.46 s with 1, load 6). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch(example: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in example.items()}


def _with_row_ids(example):
    """The example with each row's file index in deletion_matrix (to follow rows through sampling)."""
    batch = _torch(example)
    batch["deletion_matrix"] = torch.arange(ROWS, dtype=torch.float32)[:, None].expand(ROWS, LEN_A + LEN_B)
    return batch


def _order(out) -> list[int]:
    return torch.cat([out["deletion_matrix"][:, 0], out["extra_deletion_matrix"][:, 0]]).long().tolist()


# ---------------------------------------------------------------- sample_msa

def test_sampled_rows_follow_deepminds_order_rules():
    """Biased rows first, real rows next, fully masked rows last; the extra MSA is the complement."""
    batch = _with_row_ids(_example(unpaired_queries=True))
    biased = {0, 46}
    generator = torch.Generator().manual_seed(1)
    for max_seq in (32, REAL_ROWS + 5):
        for _ in range(50):
            out = sample_msa(batch, max_seq, generator)
            order = _order(out)
            assert sorted(order) == list(range(ROWS))  # selected + extra = every row exactly once
            assert set(order[:2]) == biased
            assert set(order[2:REAL_ROWS]) == set(range(REAL_ROWS)) - biased
            assert order[REAL_ROWS:] and min(order[REAL_ROWS:]) == REAL_ROWS  # padding only after real rows
            assert out["msa"].shape[0] == min(max_seq, ROWS)
            assert out["extra_msa"].shape[0] == ROWS - min(max_seq, ROWS)
            rows = torch.tensor(order)
            for key in ("msa", "msa_mask", "bert_mask"):  # each key's rows move together
                assert torch.equal(torch.cat([out[key], out["extra_" + key]]), batch[key][rows])
            assert torch.equal(out["cluster_bias_mask"], batch["cluster_bias_mask"])  # passes through
            assert out["template_aatype"] is batch["template_aatype"]


def test_without_cluster_bias_mask_row_zero_comes_first():
    batch = _with_row_ids(EXAMPLE)
    del batch["cluster_bias_mask"]
    generator = torch.Generator().manual_seed(2)
    assert all(_order(sample_msa(batch, 16, generator))[0] == 0 for _ in range(20))


def test_every_row_permutation_is_equally_likely():
    """Chi-square over the 24 orders of 4 unbiased real rows (and the 2 orders of 2 biased rows).

    1200 draws, 50 expected per order: the statistic has 23 degrees of freedom, bound = its 0.999
    quantile (49.7); for the two biased rows a binomial(1200, 1/2) count within 3.3 sigma (p = 1e-3)."""
    msa_mask = torch.ones(7, 3)
    msa_mask[6] = 0
    batch = {"msa": torch.zeros(7, 3, dtype=torch.int64), "msa_mask": msa_mask,
             "deletion_matrix": torch.arange(7.0)[:, None].expand(7, 3),
             "cluster_bias_mask": torch.tensor([1.0, 0, 0, 1, 0, 0, 0])}
    generator = torch.Generator().manual_seed(3)
    draws = 1200
    counts = {p: 0 for p in permutations((1, 2, 4, 5))}
    biased_first = 0
    for _ in range(draws):
        order = _order(sample_msa(batch, 4, generator))
        assert set(order[:2]) == {0, 3} and order[6] == 6
        counts[tuple(order[2:6])] += 1
        biased_first += order[0] == 0
    chi2 = sum((c - draws / 24) ** 2 / (draws / 24) for c in counts.values())
    assert chi2 < stats.chi2.ppf(0.999, 23), counts
    assert abs(biased_first - draws / 2) < 3.3 * math.sqrt(draws / 4)


def test_no_generator_keeps_file_order():
    batch = _with_row_ids(EXAMPLE)
    out = sample_msa(batch, 64, None)
    assert _order(out) == list(range(ROWS))
    assert torch.equal(out["msa"], batch["msa"][:64]) and torch.equal(out["extra_msa"], batch["msa"][64:])
    # Biased rows elsewhere still come first, the rest keeps file order (DeepMind's rule without noise).
    order = _order(sample_msa(_with_row_ids(_example(unpaired_queries=True)), 64, None))
    assert order == [0, 46] + [r for r in range(ROWS) if r not in (0, 46)]


# ---------------------------------------------------------------- make_masked_msa

def _sampled(seed: int, replace_fraction: float = 0.15, keep_bert: bool = False, **probs):
    """One pass's draws on the example (128 sampled rows); without the input bert_mask the output
    bert_mask shows every chosen position."""
    batch = _torch(EXAMPLE)
    if not keep_bert:
        del batch["bert_mask"]
    batch["msa_profile"] = make_msa_profile(batch)
    generator = sampling_generator(seed)
    return make_masked_msa(sample_msa(batch, 128, generator), replace_fraction, generator, **probs)


def test_masked_fraction_is_replace_fraction_and_only_where_deepmind_masks():
    """The chosen fraction of positions inside msa_mask = 0.15 within 3.3 binomial std (p = 1e-3),
    none outside it (padding rows); only chosen positions change; the output bert_mask is the
    sampled input bert_mask times the chosen positions (DeepMind's rule)."""
    eligible = chosen = 0
    for seed in range(20):
        out = _sampled(seed)
        position = out["bert_mask"] > 0
        assert not (position & (out["msa_mask"] == 0)).any()
        assert torch.equal(out["msa"][~position], (out["true_msa"] * (out["msa_mask"] > 0))[~position])
        eligible += int((out["msa_mask"] > 0).sum())
        chosen += int(position.sum())
        with_bert = _sampled(seed, keep_bert=True)
        sampled_bert = sample_msa(_torch(EXAMPLE), 128, sampling_generator(seed))["bert_mask"]
        assert torch.equal(with_bert["bert_mask"], sampled_bert * out["bert_mask"])
        assert torch.equal(with_bert["msa"], out["msa"])
    std = math.sqrt(eligible * 0.15 * 0.85)
    assert abs(chosen - 0.15 * eligible) < 3.3 * std, (chosen, eligible)
    assert eligible == 20 * 128 * (LEN_A + LEN_B)  # 128 sampled rows, all real


def _expected_probs(out, uniform_prob=0.1, profile_prob=0.1, same_prob=0.1):
    """DeepMind's replacement distribution at each chosen position: p + 1e-6, normalised, [M, 23]."""
    row, col = (out["bert_mask"] > 0).nonzero(as_tuple=True)
    probs = torch.zeros(row.shape[0], 23, dtype=torch.float64)
    probs[:, :20] = uniform_prob / 20
    probs[:, :22] += profile_prob * out["msa_profile"][col].double()
    probs[torch.arange(row.shape[0]), out["true_msa"][row, col]] += same_prob
    probs[:, MASK_TOKEN] = 1 - uniform_prob - profile_prob - same_prob
    probs += 1e-6
    return probs / probs.sum(1, keepdim=True), out["true_msa"][row, col], out["msa"][row, col]


def _chi2_ok(observed: torch.Tensor, expected: torch.Tensor) -> bool:
    """Pearson chi-square over the cells expecting >= 5 draws below its 0.9995 quantile; cells
    expecting fewer (the 1e-6 terms) must hold at most 3 draws."""
    keep = expected >= 5
    if (observed[~keep] > 3).any():
        return False
    if keep.sum() < 2:
        return True
    chi2 = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    return chi2 < stats.chi2.ppf(0.9995, int(keep.sum()) - 1)


@pytest.mark.parametrize("mix", [None, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)],
                         ids=["10-10-10-70", "uniform", "profile", "same", "mask-token"])
def test_replacements_follow_the_mixture(mix):
    """The drawn classes against DeepMind's mixture over ~3000 chosen positions (40 passes): chi-square
    of the 23-class histogram and of 'same residue' vs 'other' (bounds: 0.9995 quantiles).

    For the 10/10/10/70 split also the mask-token share = 0.7 within 3.3 binomial std (p = 1e-3)."""
    probs = {} if mix is None else dict(zip(("uniform_prob", "profile_prob", "same_prob"), mix))
    hist_obs = torch.zeros(23, dtype=torch.float64)
    hist_exp = torch.zeros(23, dtype=torch.float64)
    same_obs = same_exp = 0.0
    for seed in range(40):
        p, true, drawn = _expected_probs(_sampled(seed, **probs), **probs)
        hist_obs += torch.bincount(drawn, minlength=23).double()
        hist_exp += p.sum(0)
        same_obs += float((drawn == true).sum())
        same_exp += float(p[torch.arange(true.shape[0]), true].sum())
    total = float(hist_obs.sum())
    assert total > 2500
    assert _chi2_ok(hist_obs, hist_exp), (hist_obs, hist_exp)
    assert _chi2_ok(torch.tensor([same_obs, total - same_obs]), torch.tensor([same_exp, total - same_exp])), \
        (same_obs, same_exp)
    if not probs:
        share = float(hist_obs[MASK_TOKEN]) / total
        assert abs(share - 0.7) < 3.3 * math.sqrt(0.7 * 0.3 / total), share


# ---------------------------------------------------------------- seeding, no randomness, padding

def _pass(seed: int, prediction: int = 0, recycle: int = 0, example=EXAMPLE, replace_fraction=0.15):
    batch = _torch(example)
    batch["msa_profile"] = make_msa_profile(batch)
    generator = sampling_generator(seed, prediction, recycle)
    return make_masked_msa(sample_msa(batch, 64, generator), replace_fraction, generator)


def test_same_seed_same_draws_other_prediction_or_recycle_other_draws():
    first = _pass(7)
    again = _pass(7)
    for key in ("msa", "true_msa", "bert_mask", "extra_msa", "deletion_matrix"):
        assert torch.equal(first[key], again[key])
    for other in (_pass(8), _pass(7, prediction=1), _pass(7, recycle=1)):
        assert not torch.equal(first["true_msa"], other["true_msa"])  # another row sample
        assert not torch.equal(first["bert_mask"], other["bert_mask"])  # another mask


def test_no_generator_no_masking():
    batch = _torch(EXAMPLE)
    batch["msa_profile"] = make_msa_profile(batch)
    for generator, fraction in ((None, 0.15), (sampling_generator(0), 0.0)):
        out = make_masked_msa(sample_msa(batch, 64, None), fraction, generator)
        assert torch.equal(out["msa"], batch["msa"][:64]) and torch.equal(out["true_msa"], batch["msa"][:64])
        assert not out["bert_mask"].any()


def test_draws_do_not_depend_on_padding():
    """Extra padding rows and residues (masked out) change no draw of a real row or residue."""
    padded = dict(EXAMPLE)
    extra_rows, extra_res = 40, 6
    for key in ("msa", "deletion_matrix", "msa_mask", "bert_mask"):
        padded[key] = np.pad(EXAMPLE[key], ((0, extra_rows), (0, extra_res)))
    padded["cluster_bias_mask"] = np.pad(EXAMPLE["cluster_bias_mask"], (0, extra_rows))
    plain, wide = _pass(3), _pass(3, example=padded)
    num_res = LEN_A + LEN_B
    for key in ("msa", "true_msa", "bert_mask"):
        assert torch.equal(plain[key], wide[key][:, :num_res])
    assert not wide["bert_mask"][:, num_res:].any()
    real_extra = REAL_ROWS - 64
    assert torch.equal(plain["extra_msa"][:real_extra], wide["extra_msa"][:real_extra, :num_res])


# ---------------------------------------------------------------- bad input

def _bad(change):
    features = {k: np.array(v) for k, v in EXAMPLE.items()}
    change(features)
    return features


def _set(key, value):
    def change(features):
        features[key] = value(features) if callable(value) else value
    return change


@pytest.mark.parametrize("change, words", [
    (lambda f: [f.pop("asym_id"), f.update(msa_feat=np.zeros((1, 4, 40, 49)), target_feat=np.zeros((1, 40, 22)))],
     ["monomer features", "model_1_ptm", "asym_id"]),
    (lambda f: [f.pop("sym_id"), f.pop("cluster_bias_mask")], ["lack sym_id, cluster_bias_mask"]),
    (lambda f: f.pop("template_all_atom_positions"), ["template_all_atom_positions"]),
    (_set("aatype", lambda f: f["aatype"][None]), ["aatype", "(1, 40)", "leading batch"]),
    (_set("deletion_matrix", lambda f: f["deletion_matrix"][:, :30]),
     ["deletion_matrix", "axis 1", "is 30", "aatype has 40"]),
    (_set("cluster_bias_mask", np.zeros(100)), ["cluster_bias_mask", "axis 0", "is 100", "msa has 160"]),
    (_set("template_all_atom_mask", np.zeros((4, 40, 36))), ["template_all_atom_mask", "axis 2 must be 37"]),
    (_set("template_aatype", np.zeros((3, 40))), ["template_all_atom_mask", "is 4", "template_aatype has 3"]),
    (_set("msa", lambda f: np.where(f["msa"] == 21, 23, f["msa"])), ["msa holds 23", "0..21"]),
    (_set("asym_id", lambda f: f["asym_id"] + 0.5), ["asym_id holds 1.5"]),
    (_set("asym_id", np.repeat([1.0, 2.0, 1.0], [20, 16, 4])), ["chain A (asym_id 1) is not contiguous"]),
    (_set("entity_id", np.repeat([1.0, 2.0, 3.0], [24, 10, 6])), ["chain B (asym_id 2)", "entity_id values [2, 3]"]),
    (_set("entity_id", np.ones(40)), ["chain A (asym_id 1) and chain B (asym_id 2)", "sym_id 1"]),
    (lambda f: [f.update(entity_id=np.ones(40), sym_id=np.repeat([1.0, 2.0], [24, 16]))],
     ["chain A (asym_id 1) and chain B (asym_id 2) share entity_id 1", "24 and 16 residues"]),
    (_set("asym_id", np.repeat([1.0, 0.0], [24, 16])), ["residue 24 has asym_id 0", "seq_mask 1"]),
])
def test_bad_examples_are_refused_naming_source_and_key(change, words):
    with pytest.raises(InputError) as error:
        validate_multimer_example(_bad(change), "complex.npz")
    message = str(error.value)
    assert message.startswith("complex.npz")
    for word in words:
        assert word in message, message


def test_a_good_example_passes_and_chains_are_named_as_deepmind_does():
    validate_multimer_example(EXAMPLE, "complex.npz")
    homodimer = dict(EXAMPLE, aatype=np.concatenate([EXAMPLE["aatype"][:20]] * 2),
                     asym_id=np.repeat([1.0, 2.0], 20), entity_id=np.ones(40), sym_id=np.repeat([1.0, 2.0], 20))
    validate_multimer_example(homodimer, "homodimer.npz")
    assert [chain_name(i) for i in (1, 2, 26, 27, 28, 53)] == ["A", "B", "Z", "AA", "BA", "AB"]


# ---------------------------------------------------------------- against DeepMind's functions (jax)

DRAWS = 50  # DeepMind's padding-consistent draws cost ~0.1 s a pass here (threefry per element)


@pytest.fixture(scope="module")
def deepmind_draws():
    """DeepMind's profile -> sample_msa(128 rows) -> make_masked_msa(0.15, 10/10/10/70) on the example
    without bert_mask (so the output bert_mask shows every chosen position), run with jax for DRAWS
    keys."""
    jax = pytest.importorskip("jax", reason="needs the `reference` extra (jax, haiku, alphafold)")
    pytest.importorskip("alphafold", reason="needs the `reference` extra (jax, haiku, alphafold)")
    import ml_collections  # deferred: part of the reference extra
    from alphafold.model import modules_multimer, prng  # deferred: the reference extra

    jax.config.update("jax_enable_x64", False)
    config = ml_collections.ConfigDict({"uniform_prob": 0.1, "profile_prob": 0.1, "same_prob": 0.1,
                                        "replace_fraction": 0.15})
    batch = {k: jax.numpy.asarray(EXAMPLE[k]) for k in
             ("msa", "deletion_matrix", "msa_mask", "cluster_bias_mask")}
    batch["deletion_matrix"] = jax.numpy.broadcast_to(jax.numpy.arange(ROWS, dtype=jax.numpy.float32)[:, None],
                                                      (ROWS, LEN_A + LEN_B))

    def one(key):
        sample_key, mask_key = jax.random.split(key)
        b = dict(batch, msa_profile=modules_multimer.make_msa_profile(batch))
        b = modules_multimer.sample_msa(prng.SafeKey(sample_key), b, 128)
        b = modules_multimer.make_masked_msa(b, prng.SafeKey(mask_key), config)
        return {k: b[k] for k in ("msa", "true_msa", "bert_mask", "msa_mask", "deletion_matrix",
                                  "extra_deletion_matrix")}

    # jax's "unsafe_rbg" PRNG, one jitted pass per key: with the default threefry XLA compiles
    # DeepMind's per-element padding-consistent keys for 11 s here (24 s vmapped over the keys), with
    # unsafe_rbg for 5 s (load 9 on 2 cores). The comparison is of distributions, so which PRNG
    # drives DeepMind's functions does not matter.
    with jax.default_prng_impl("unsafe_rbg"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Explicitly requested dtype int64")  # DeepMind's iota, x64 off
        one = jax.jit(one)
        draws = [one(key) for key in jax.random.split(jax.random.PRNGKey(0), DRAWS)]
    return {k: torch.from_numpy(np.stack([np.array(d[k]) for d in draws])) for k in draws[0]}


@pytest.fixture(scope="module")
def our_draws():
    batch = _with_row_ids(EXAMPLE)
    del batch["bert_mask"]
    outs = []
    for seed in range(DRAWS):
        b = dict(batch, msa_profile=make_msa_profile(batch))
        generator = sampling_generator(seed)
        b = make_masked_msa(sample_msa(b, 128, generator), 0.15, generator)
        outs.append(b)
    return {k: torch.stack([o[k] for o in outs]) for k in
            ("msa", "true_msa", "bert_mask", "msa_mask", "deletion_matrix", "extra_deletion_matrix")}


def _summary(draws) -> dict[str, float]:
    """Per-implementation statistics over the draws."""
    order = torch.cat([draws["deletion_matrix"][..., 0], draws["extra_deletion_matrix"][..., 0]], 1).long()
    chosen = draws["bert_mask"] > 0
    chain_a_rows = torch.arange(1, 46)
    rank = order.argsort(1)  # rank[d, row] = position of the row in draw d
    drawn = draws["msa"][chosen]
    return {"row0_first": float((order[:, 0] == 0).float().mean()),
            "padding_in_main": float((order[:, :128] >= REAL_ROWS).float().mean()),
            "real_in_extra_first": float((order[:, 128:128 + REAL_ROWS - 128] < REAL_ROWS).float().mean()),
            "rank_chain_a": float(rank[:, chain_a_rows].float().mean()),
            "chosen": float(chosen.sum()), "eligible": float((draws["msa_mask"] > 0).sum()),
            "mask_token": float((drawn == MASK_TOKEN).sum()),
            "same": float((drawn == draws["true_msa"][chosen]).sum()),
            "changed_outside_mask": float(((draws["msa"] != draws["true_msa"] * (draws["msa_mask"] > 0))
                                           & ~chosen).sum())}


def _two_proportions_agree(k1: float, n1: float, k2: float, n2: float) -> bool:
    """|p1 - p2| within 3.3 std of the pooled two-sample difference (p = 1e-3 false alarm)."""
    pooled = (k1 + k2) / (n1 + n2)
    return abs(k1 / n1 - k2 / n2) < 3.3 * math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


@pytest.mark.reference
def test_row_order_rules_and_rank_distribution_match_deepmind(deepmind_draws, our_draws):
    """Both: row 0 first in every draw, padding never in the main MSA while real rows remain, the
    real rows beyond 128 next. The mean rank of chain A's 45 own rows (each uniform over ranks
    1..142: mean 71.5, std 41.0; 45 drawn without replacement per draw: variance of their mean
    std^2/45 x 97/141) agrees between the two within 3.3 std of the difference of the two means."""
    ours, theirs = _summary(our_draws), _summary(deepmind_draws)
    for s in (ours, theirs):
        assert s["row0_first"] == 1.0 and s["padding_in_main"] == 0.0 and s["real_in_extra_first"] == 1.0
    std_of_mean = math.sqrt((142**2 - 1) / 12 / 45 * 97 / 141 / DRAWS)
    assert abs(ours["rank_chain_a"] - theirs["rank_chain_a"]) < 3.3 * std_of_mean * math.sqrt(2), (ours, theirs)
    assert abs(ours["rank_chain_a"] - 71.5) < 3.3 * std_of_mean, ours


@pytest.mark.reference
def test_bert_masking_statistics_match_deepmind(deepmind_draws, our_draws):
    """Both implementations, on the same example, DRAWS passes each: the chosen fraction, the share of
    mask tokens and of kept residues among chosen positions agree (two-proportion tests, p = 1e-3);
    neither changes a position it did not choose (besides msa *= msa_mask)."""
    ours, theirs = _summary(our_draws), _summary(deepmind_draws)
    assert ours["eligible"] == theirs["eligible"] == DRAWS * 128 * (LEN_A + LEN_B)
    assert _two_proportions_agree(ours["chosen"], ours["eligible"], theirs["chosen"], theirs["eligible"])
    for key in ("mask_token", "same"):
        assert _two_proportions_agree(ours[key], ours["chosen"], theirs[key], theirs["chosen"]), (key, ours, theirs)
    assert ours["changed_outside_mask"] == theirs["changed_outside_mask"] == 0


# ---------------------------------------------------------------- DeepMind's own multimer examples

def _deepmind_example(homodimer: bool) -> dict[str, np.ndarray]:
    """DeepMind's data path (convert_monomer_features, add_assembly_features, pair_and_merge,
    pad_msa) on real MSAs: jackhmmer's HBB_HUMAN MSA, and MYG_ESCGI with no homologues as the second
    chain of the heterodimer; no template hits (one all-zero template per chain, as DeepMind)."""
    pytest.importorskip("alphafold", reason="needs the `reference` extra (jax, haiku, alphafold)")
    from alphafold.data import (  # deferred: the reference extra
        feature_processing,
        pipeline,
        pipeline_multimer,
    )
    from alphafold.data import parsers as dm_parsers  # deferred: the reference extra

    def chain_features(msa, paired: bool):
        sequence = msa.sequences[0]
        num_res = len(sequence)
        features = {**pipeline.make_sequence_features(sequence, msa.descriptions[0], num_res),
                    **pipeline.make_msa_features([msa]),
                    "template_aatype": np.zeros((1, num_res, 22)), "template_all_atom_masks": np.zeros((1, num_res, 37)),
                    "template_all_atom_positions": np.zeros((1, num_res, 37, 3)),
                    "template_domain_names": np.array([b"none"]), "template_sequence": np.array([b"none"]),
                    "template_sum_probs": np.zeros((1, 1))}
        if paired:
            features.update({f"{k}_all_seq": v for k, v in pipeline.make_msa_features([msa]).items()})
        return features

    hbb = dm_parsers.parse_stockholm(parsers.read_text(f"{DATA}/hbb_vs_globins45.sto"))
    sequences, names = parsers.parse_fasta(parsers.read_text("tests/data/preprocessing/queries/globins45.fa"))
    myg = dm_parsers.Msa([sequences[0]], [[0] * len(sequences[0])], [names[0]])
    chains = {cid: pipeline_multimer.convert_monomer_features(chain_features(msa, not homodimer), chain_id=cid)
              for cid, msa in zip("AB", (hbb, hbb) if homodimer else (hbb, myg))}
    example = feature_processing.pair_and_merge(all_chain_features=pipeline_multimer.add_assembly_features(chains))
    return pipeline_multimer.pad_msa(example, 512)


@pytest.mark.reference
@pytest.mark.parametrize("homodimer", [False, True], ids=["heterodimer", "homodimer"])
def test_deepmind_examples_are_accepted_and_sampled(homodimer):
    """DeepMind's own examples pass the checks; without a generator the rows stay in file order;
    a sampled pass keeps the query first and the 46 real rows ahead of the padding rows."""
    example = _deepmind_example(homodimer)
    validate_multimer_example(example, "deepmind.npz")
    batch = _torch({k: v for k, v in example.items() if np.ndim(v) > 0})
    rows = batch["msa"].shape[0]
    batch["deletion_matrix"] = torch.arange(rows, dtype=torch.float32)[:, None].expand_as(batch["msa_mask"])
    assert _order(sample_msa(batch, 508, None)) == list(range(rows))
    real = int(batch["msa_mask"].any(1).sum())
    order = _order(sample_msa(batch, 508, sampling_generator(0)))
    assert order[0] == 0 and set(order[:real]) == set(range(real))
    if homodimer:  # both copies: one entity, sym_id 1 and 2; equal sym_ids are refused
        assert set(example["sym_id"]) == {1.0, 2.0} and set(example["entity_id"]) == {1.0}
        with pytest.raises(InputError, match=r"chain A \(asym_id 1\) and chain B \(asym_id 2\) both have"):
            validate_multimer_example(dict(example, sym_id=np.ones_like(example["sym_id"])), "deepmind.npz")


@pytest.mark.reference
def test_msa_profile_equals_deepminds():
    """make_msa_profile = DeepMind's make_msa_profile (jax, fp32) to 1e-6 (measured: 6e-8)."""
    jax = pytest.importorskip("jax", reason="needs the `reference` extra (jax, haiku, alphafold)")
    from alphafold.model import modules_multimer  # deferred: the reference extra

    example = _example()
    example["msa_mask"][5:9, 3:7] = 0  # some masked positions inside real rows
    theirs = np.asarray(modules_multimer.make_msa_profile({k: jax.numpy.asarray(example[k]) for k in ("msa", "msa_mask")}))
    ours = make_msa_profile(_torch(example)).numpy()
    assert np.abs(ours - theirs).max() < 1e-6
