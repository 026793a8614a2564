"""In-network sampling of AlphaFold-Multimer: MSA row selection and BERT masking, and input checks.

The multimer network draws a new sample in every pass (every recycle) from the example that
DeepMind's ``pipeline_multimer.DataPipeline.process`` returns, which carries no batch axis:
``msa``, ``deletion_matrix``, ``msa_mask``, ``bert_mask`` are ``[N, L]``, ``cluster_bias_mask`` is
``[N]`` (N rows, L residues of all chains). The functions here take and return such dicts of torch
tensors; keys they do not touch pass through.

* :func:`sample_msa` orders the rows (query rows first, fully masked rows last, the rest in random
  order) and splits them into the main MSA (the first ``max_seq``) and the extra MSA (the rest).
* :func:`make_masked_msa` applies the BERT-style masking that the multimer model keeps at inference.
* :func:`sampling_generator` gives the ``torch.Generator`` of one pass from the run's seed.
* :func:`validate_multimer_example` refuses a wrong example with one clear error.

Randomness. A ``torch.Generator`` supplies one 64-bit key per draw; the random numbers of that draw
are a hash of the key and of the element's index (row, column, class), so, as DeepMind's
``padding_consistent_rng``, an element's draw does not depend on how far the arrays are padded:
padding rows or residues changes no draw of a real element. ``generator=None`` means no randomness
(rows in their deterministic order, nothing masked), for RNG-free comparisons with the reference.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from af2cpu.errors import InputError

MASK_TOKEN = 22  # the BERT [MASK] class, after the 20 amino acids, X (20) and the gap (21)
_MSA_CLASSES = 22  # classes of the MSA profile: 20 amino acids, X, gap
_BIG = 1e6  # DeepMind's logit offset for query rows (+) and fully masked rows (-)
_EPS = 1e-6  # DeepMind's epsilon in the Gumbel noise and in log(probability)
_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 tensors holding values below 2**32, without int64 overflow."""
    high = (x * (c >> 16)) & 0xFFFF
    return ((high << 16) + x * (c & 0xFFFF)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (xor-shift-multiply, constants of C. Wellons' 'lowbias32')."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _draw_key(generator: torch.Generator) -> tuple[int, int]:
    """Two 32-bit words from the generator: the key of one draw."""
    words = torch.randint(0, 2**32, (2,), generator=generator, dtype=torch.int64)
    return int(words[0]), int(words[1])


def _uniform(key: tuple[int, int], salt: int, *indices: torch.Tensor, fine: bool = False) -> torch.Tensor:
    """Uniform numbers in [0, 1), one per element of the broadcast index tensors: float32 with 24
    random bits, or with ``fine`` float64 with 48 (row orders: two rows tie only on equal 32-bit
    hashes, odds N**2 / 2**33 for N rows).

    Element ``(i, j, ...)`` gets a hash of (key, salt, i, j, ...): the same number whatever the
    shape of the array around it (padding consistency)."""
    h = _hash32(torch.tensor((key[0] ^ _hash32(torch.tensor(key[1] ^ salt)).item()) & _MASK32))
    for axis, index in enumerate(indices):
        h = _hash32(h ^ _hash32((index.to(torch.int64) + 0x9E3779B9 * (axis + 1)) & _MASK32))
    if fine:
        return (((h >> 8) << 24) + (_hash32(h ^ 0x5BD1E995) >> 8)).to(torch.float64) * 2.0**-48
    return (h >> 8).to(torch.float32) * 2.0**-24


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniform numbers, with DeepMind's epsilon (``gumbel_noise``)."""
    return -torch.log(-torch.log(uniform + _EPS) + _EPS)


def sample_msa(batch: dict[str, torch.Tensor], max_seq: int,
               generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Order the MSA rows at random and split them into main MSA (first ``max_seq``) and extra MSA.

    As DeepMind's ``modules_multimer.sample_msa``: each row gets the logit
    ``1e6 * cluster_bias_mask - 1e6 * (row fully masked)`` (without ``cluster_bias_mask``: 1 on row 0
    only) plus Gumbel noise, and rows are taken by decreasing logit (a Gumbel-argsort sample, i.e.
    a uniformly random permutation within each logit level): rows with ``cluster_bias_mask`` set
    (each chain's query) come first, rows whose ``msa_mask`` is all zero come last. ``msa``,
    ``deletion_matrix``, ``msa_mask`` and ``bert_mask`` (when present) keep the first ``max_seq``
    rows; their remaining rows become ``extra_msa``, ``extra_deletion_matrix``, ``extra_msa_mask``,
    ``extra_bert_mask``. Other keys, ``cluster_bias_mask`` included, pass through unchanged.

    ``generator=None``: no noise; rows are taken by decreasing logit in file order within a level,
    which is exactly file order for DeepMind's examples (query first, padding rows last).
    The logits and noise are float64 from 48-bit uniforms: DeepMind adds them in float32, where the
    1e6 offset rounds the noise of query rows to steps of 1/16 and ties then favour one row order.
    """
    # DISCREPANCY: the supplement (1.2.7) draws cluster centres uniformly, the query kept first; the
    # multimer reference biases every cluster_bias_mask row first and sends fully masked rows last.
    msa_mask = batch["msa_mask"]
    num_rows = msa_mask.shape[0]
    has_residue = msa_mask.to(torch.float64).sum(-1).clamp(0.0, 1.0)
    if "cluster_bias_mask" in batch:
        cluster_bias = batch["cluster_bias_mask"].to(torch.float64)
    else:
        cluster_bias = torch.zeros(num_rows, dtype=torch.float64)
        cluster_bias[:1] = 1.0
    logits = (has_residue - 1.0) * _BIG + cluster_bias * _BIG
    if generator is not None:
        rows = torch.arange(num_rows)
        logits = logits + _gumbel(_uniform(_draw_key(generator), 0, rows, fine=True))
    order = torch.argsort(logits, descending=True, stable=True)
    selected, extra = order[:max_seq], order[max_seq:]
    out = dict(batch)
    for name in ("msa", "deletion_matrix", "msa_mask", "bert_mask"):
        if name in batch:
            out["extra_" + name] = batch[name][extra]
            out[name] = batch[name][selected]
    return out


def make_msa_profile(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MSA profile ``[L, 22]``: masked mean over rows of one_hot(msa, 22) (DeepMind's ``make_msa_profile``).

    The multimer network computes it from the whole MSA before :func:`sample_msa`;
    :func:`make_masked_msa` reads it as ``batch["msa_profile"]``."""
    msa, mask = batch["msa"].long(), batch["msa_mask"].to(torch.float32)
    num_res = msa.shape[1]
    cell = (torch.arange(num_res) * _MSA_CLASSES + msa).flatten()  # (column, class) of each element
    counts = torch.bincount(cell, weights=mask.flatten(), minlength=num_res * _MSA_CLASSES)
    return counts.view(num_res, _MSA_CLASSES).to(torch.float32) / (mask.sum(0)[:, None] + 1e-10)


def make_masked_msa(batch: dict[str, torch.Tensor], replace_fraction: float, generator: torch.Generator | None,
                    uniform_prob: float = 0.1, profile_prob: float = 0.1,
                    same_prob: float = 0.1) -> dict[str, torch.Tensor]:
    """BERT-style masking of the sampled MSA (supplement 1.2.7), as the multimer model applies it at inference.

    As DeepMind's ``modules_multimer.make_masked_msa``: each position with ``msa_mask`` set is
    chosen with probability ``replace_fraction``; a chosen position's residue is replaced by a draw
    from ``uniform_prob`` x uniform over the 20 amino acids + ``profile_prob`` x the column's MSA
    profile (``batch["msa_profile"]``, see :func:`make_msa_profile`) + ``same_prob`` x the residue
    itself + the rest x the mask token 22, drawn with the Gumbel-max trick on log(p + 1e-6).
    Returns the batch with ``true_msa`` (the input msa), ``msa`` (the masked MSA, times msa_mask:
    positions outside msa_mask read 0 as in DeepMind) and ``bert_mask`` (the chosen positions,
    times the input ``bert_mask`` when there is one).

    ``replace_fraction == 0`` or ``generator=None``: nothing is chosen, so ``msa`` is unchanged
    wherever msa_mask is set and ``bert_mask`` is all zero, as DeepMind's function then gives.
    """
    mask_prob = 1.0 - uniform_prob - profile_prob - same_prob
    if mask_prob < 0 or min(uniform_prob, profile_prob, same_prob) < 0:
        raise ValueError(f"BERT replacement probabilities must be >= 0 and sum to <= 1, got uniform "
                         f"{uniform_prob}, profile {profile_prob}, same {same_prob}")
    msa = batch["msa"]
    in_mask = batch["msa_mask"] > 0
    key = _draw_key(generator) if generator is not None else None
    if key is None or replace_fraction <= 0:
        chosen = torch.zeros_like(in_mask)
    else:
        rows = torch.arange(msa.shape[0])[:, None]
        cols = torch.arange(msa.shape[1])[None, :]
        chosen = (_uniform(key, 1, rows, cols) < replace_fraction) & in_mask
    masked = msa.clone()
    if chosen.any():
        row, col = chosen.nonzero(as_tuple=True)
        residue = msa[row, col].long()
        probs = torch.empty(row.shape[0], _MSA_CLASSES + 1)
        probs[:, :20] = uniform_prob / 20
        probs[:, 20:_MSA_CLASSES] = 0.0
        probs[:, :_MSA_CLASSES] += profile_prob * batch["msa_profile"].to(torch.float32)[col]
        probs[torch.arange(row.shape[0]), residue] += same_prob
        probs[:, MASK_TOKEN] = mask_prob
        classes = torch.arange(_MSA_CLASSES + 1)[None, :]
        noise = _gumbel(_uniform(key, 2, row[:, None], col[:, None], classes))
        masked[row, col] = torch.argmax(torch.log(probs + _EPS) + noise, dim=-1).to(msa.dtype)
    masked = masked * in_mask.to(msa.dtype)
    out = dict(batch)
    bert = chosen.to(torch.float32)
    out["bert_mask"] = batch["bert_mask"] * bert if "bert_mask" in batch else bert
    out["true_msa"] = msa
    out["msa"] = masked
    return out


def sampling_generator(random_seed: int, prediction_index: int = 0, recycle_index: int = 0) -> torch.Generator:
    """The generator of one network pass: a function of (random_seed, prediction, recycle) only.

    DeepMind seeds prediction ``k`` of a run with ``random_seed`` and model index (run_alphafold:
    ``model_index + random_seed * num_models``) and splits a new JAX key for every recycle, from
    which each pass draws its own MSA sample and BERT mask. Here the pass's ``torch.Generator`` is
    seeded with 63 bits of SHA-256 of the three numbers, so every (seed, prediction, recycle) has its
    own stream, reproducible run to run and independent of how many passes ran before it; within
    a pass :func:`sample_msa` draws first, then :func:`make_masked_msa`.
    """
    text = f"af2cpu multimer sampling:{int(random_seed)}:{int(prediction_index)}:{int(recycle_index)}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


# The multimer example (DeepMind's pipeline_multimer output): key -> axes; L residues, N MSA rows,
# T templates. Optional keys are checked when present.
MULTIMER_SHAPES: dict[str, tuple] = {
    "aatype": ("L",), "residue_index": ("L",), "asym_id": ("L",), "entity_id": ("L",), "sym_id": ("L",),
    "seq_mask": ("L",), "msa": ("N", "L"), "deletion_matrix": ("N", "L"), "msa_mask": ("N", "L"),
    "cluster_bias_mask": ("N",), "template_aatype": ("T", "L"), "template_all_atom_mask": ("T", "L", 37),
    "template_all_atom_positions": ("T", "L", 37, 3),
}
OPTIONAL_SHAPES: dict[str, tuple] = {
    "bert_mask": ("N", "L"), "all_atom_positions": ("L", 37, 3), "all_atom_mask": ("L", 37),
}
_AXIS_NAMES = {"L": "residues", "N": "MSA rows", "T": "templates"}
_AXIS_SOURCES = {"L": "aatype", "N": "msa", "T": "template_aatype"}
_HOW = "Pass the multimer example as DeepMind's pipeline_multimer.DataPipeline.process returns it (no batch axis)"


def chain_name(asym_id: int) -> str:
    """mmCIF-style chain name of a 1-based asym_id: 1 -> A, 26 -> Z, 27 -> AA, 28 -> BA (as DeepMind)."""
    letters, number = [], asym_id - 1
    while True:
        letters.append(chr(ord("A") + number % 26))
        number = number // 26 - 1
        if number < 0:
            return "".join(letters)


def _chain(asym_id: int) -> str:
    return f"chain {chain_name(asym_id)} (asym_id {asym_id})"


def _whole(source: str, name: str, values: np.ndarray, low: int, high: int | None = None) -> np.ndarray:
    """The values as int64, or an error naming the key when they are not whole numbers in range."""
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{source}: feature {name} has dtype {values.dtype}; expected numbers. {_HOW}")
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < low)
    if high is not None:
        bad |= values > high
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise InputError(f"{source}: feature {name} holds {values[where].item()} at index {where}; expected whole "
                         f"numbers {bound}. {_HOW}")
    return values.astype(np.int64)


def validate_multimer_example(features: dict[str, np.ndarray], source: str) -> None:
    """Refuse an example the multimer network cannot read, with one :class:`InputError` naming
    ``source`` (the file or caller) and the key, axis or chain at fault.

    Checks: a monomer features dict (``msa_feat``/``target_feat``, no ``asym_id``); missing
    multimer keys; a leading batch axis; each key's axes against ``aatype`` (residues), ``msa``
    (rows) and ``template_aatype`` (templates); value ranges of ``aatype``, ``msa`` and the chain
    ids; and per chain: residues of one asym_id contiguous, one entity_id and sym_id per chain,
    (entity_id, sym_id) unique across chains, chains of one entity with the same sequence.
    """
    if "asym_id" not in features and ("msa_feat" in features or "target_feat" in features):
        raise InputError(f"{source} holds monomer features (msa_feat/target_feat, no asym_id), but a "
                         f"multimer preset needs DeepMind's multimer example (asym_id, entity_id, sym_id, msa, "
                         f"...): use a monomer preset such as model_1_ptm for these features. {_HOW}")
    missing = [name for name in MULTIMER_SHAPES if name not in features]
    if missing:
        raise InputError(f"{source}: multimer features lack {', '.join(missing)}. {_HOW}")
    sizes: dict[str, int] = {}
    for name, dims in {**MULTIMER_SHAPES, **OPTIONAL_SHAPES}.items():
        if name not in features:
            continue
        shape = np.shape(features[name])
        if len(shape) != len(dims):
            extra = " (a leading batch or recycle axis? the multimer example has none)" \
                if len(shape) == len(dims) + 1 else ""
            raise InputError(f"{source}: feature {name} has shape {shape}; expected {len(dims)} axes "
                             f"({', '.join(_AXIS_NAMES.get(d, str(d)) for d in dims)}){extra}. {_HOW}")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            expected = dim if isinstance(dim, int) else sizes.setdefault(dim, size)
            if size != expected:
                what = f"must be {dim}" if isinstance(dim, int) else \
                    f"({_AXIS_NAMES[dim]}) is {size}, but {_AXIS_SOURCES[dim]} has {expected}"
                raise InputError(f"{source}: feature {name} has shape {shape}: its axis {axis} {what}. {_HOW}")
    if sizes["N"] < 1:
        raise InputError(f"{source}: feature msa has no rows; it needs at least the query sequence. {_HOW}")
    if sizes["T"] < 1:
        raise InputError(f"{source}: feature template_aatype has no templates; DeepMind's pipeline gives an "
                         f"all-zero template where a chain has none (template_* arrays with 4 rows). {_HOW}")
    _whole(source, "aatype", np.asarray(features["aatype"]), 0, 20)
    _whole(source, "msa", np.asarray(features["msa"]), 0, 21)
    asym = _whole(source, "asym_id", np.asarray(features["asym_id"]), 0)
    entity = _whole(source, "entity_id", np.asarray(features["entity_id"]), 0)
    sym = _whole(source, "sym_id", np.asarray(features["sym_id"]), 0)
    _check_chains(source, asym, entity, sym, np.asarray(features["aatype"]), np.asarray(features["seq_mask"]))


def _check_chains(source: str, asym: np.ndarray, entity: np.ndarray, sym: np.ndarray, aatype: np.ndarray,
                  seq_mask: np.ndarray) -> None:
    unassigned = np.flatnonzero((asym == 0) & (seq_mask > 0))
    if unassigned.size:
        raise InputError(f"{source}: residue {int(unassigned[0])} has asym_id 0 (padding) but seq_mask 1; "
                         f"every real residue belongs to a chain (asym_id 1, 2, ...). {_HOW}")
    owner: dict[tuple[int, int], int] = {}
    sequences: dict[int, tuple[int, np.ndarray]] = {}
    for chain_id in (int(a) for a in np.unique(asym) if a > 0):
        at = np.flatnonzero(asym == chain_id)
        if at[-1] - at[0] + 1 != at.size:
            gap = int(at[np.flatnonzero(np.diff(at) > 1)[0]])
            raise InputError(f"{source}: {_chain(chain_id)} is not contiguous: its residues run to position "
                             f"{gap} and resume later (asym_id must number each chain's residues as one "
                             f"block). {_HOW}")
        for name, ids in (("entity_id", entity), ("sym_id", sym)):
            values = np.unique(ids[at])
            if values.size != 1:
                raise InputError(f"{source}: {_chain(chain_id)} has {name} values {values.tolist()}; every "
                                 f"residue of a chain has the same {name}. {_HOW}")
        key = (int(entity[at[0]]), int(sym[at[0]]))
        if key in owner:
            raise InputError(f"{source}: {_chain(owner[key])} and {_chain(chain_id)} both have entity_id "
                             f"{key[0]} and sym_id {key[1]}; the copies of one entity are numbered "
                             f"sym_id 1, 2 and so on. {_HOW}")
        owner[key] = chain_id
        first = sequences.setdefault(key[0], (chain_id, aatype[at]))
        if first[0] != chain_id and not np.array_equal(first[1], aatype[at]):
            raise InputError(f"{source}: {_chain(first[0])} and {_chain(chain_id)} share entity_id {key[0]} "
                             f"but their sequences differ ({first[1].size} and {at.size} residues); chains "
                             f"of one entity have one sequence. {_HOW}")
