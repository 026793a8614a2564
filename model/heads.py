"""The output heads of AlphaFold2 other than the structure module.

Each head is ``forward(representations, batch) -> dict`` with the reference's output keys; the
attribute paths mirror the haiku scopes (``alphafold/alphafold_iteration/<head>/<layer>``) when a
head is the attribute of the same name of the iteration module. Heads run in fp32. The pair and MSA
representations come in the trunk's dtype (bf16 or fp32); the heads that read them upcast a block of
rows at a time (``HEAD_BLOCK_BYTES`` of fp32 input per block), so no fp32 copy of them exists whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.common import residue_constants as rc
from af2cpu.model.options import chunk_slices
from af2cpu.model.presets import HeadsConfig
from af2cpu.model.primitives import LayerNorm, Linear

# fp32 bytes of a head's input per block of rows (the pair heads and the structure module's pair input).
HEAD_BLOCK_BYTES = 16 << 20


def _fp32(x) -> torch.Tensor:
    return torch.as_tensor(x).float()


def row_blocks(act: torch.Tensor):
    """Slices of the first axis of ``act`` whose fp32 copies take about ``HEAD_BLOCK_BYTES``."""
    row_bytes = 4 * act[0].numel()
    return chunk_slices(act.shape[0], max(1, HEAD_BLOCK_BYTES // max(1, row_bytes)))


def by_rows(fn, act: torch.Tensor) -> torch.Tensor:
    """``fn(act.float())`` (a row-wise function, fp32) computed a block of rows of ``act`` at a time."""
    act = torch.as_tensor(act)
    out = None
    for s in row_blocks(act):
        block = fn(act[s].float())
        if out is None:
            out = block.new_empty((act.shape[0], *block.shape[1:]))
        out[s] = block
    return out


class PredictedLDDTHead(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 29 'predictPerResidueLDDT_Ca' (Suppl. 1.9.6).

    Binned per-residue lDDT-Cα logits (N, num_bins) from the structure module's final single
    representation ``representations['structure_module']`` of ``num_input`` channels.
    """

    def __init__(self, cfg: HeadsConfig, num_input: int):
        super().__init__()
        self.input_layer_norm = LayerNorm(num_input)
        self.act_0 = Linear(num_input, cfg.plddt_num_channels)
        self.act_1 = Linear(cfg.plddt_num_channels, cfg.plddt_num_channels)
        self.logits = Linear(cfg.plddt_num_channels, cfg.plddt_num_bins)

    def forward(self, representations: dict, batch: dict | None = None) -> dict:
        act = self.input_layer_norm(_fp32(representations["structure_module"]))
        act = F.relu(self.act_0(act))
        act = F.relu(self.act_1(act))
        return {"logits": self.logits(act)}


class DistogramHead(nn.Module):
    """Jumper et al. (2021) Suppl. 1.9.8 'Distogram prediction'.

    Symmetric Cβ-distance logits (N, N, num_bins) from the pair representation (``c_z`` channels),
    and the bin edges.
    """

    def __init__(self, cfg: HeadsConfig, c_z: int):
        super().__init__()
        self.cfg = cfg
        self.half_logits = Linear(c_z, cfg.distogram_num_bins)

    def forward(self, representations: dict, batch: dict | None = None) -> dict:
        pair = torch.as_tensor(representations["pair"])
        # Logits [i, j] = half[i, j] + half[j, i], a block of rows i at a time: the rows and the
        # columns of the block project separately (each projection is computed twice, no half whole).
        logits = pair.new_empty((*pair.shape[:2], self.cfg.distogram_num_bins), dtype=torch.float32)
        for s in row_blocks(pair):
            torch.add(self.half_logits(pair[s].float()), self.half_logits(pair[:, s].float()).transpose(0, 1),
                      out=logits[s])
        cfg = self.cfg
        edges = torch.linspace(
            cfg.distogram_first_break,
            cfg.distogram_last_break,
            cfg.distogram_num_bins - 1,
            device=logits.device,
        )
        return {"logits": logits, "bin_edges": edges}


class MaskedMsaHead(nn.Module):
    """Jumper et al. (2021) Suppl. 1.9.9 'Masked MSA prediction'.

    Logits (N_seq, N, num_output) over the residue alphabet at every MSA position, from the MSA
    representation (``c_m`` channels).
    """

    def __init__(self, cfg: HeadsConfig, c_m: int, multimer: bool = False):
        super().__init__()
        num_output = len(rc.restypes_with_x_and_gap) if multimer else cfg.masked_msa_num_output
        self.logits = Linear(c_m, num_output)

    def forward(self, representations: dict, batch: dict | None = None) -> dict:
        return {"logits": by_rows(self.logits, representations["msa"])}


class ExperimentallyResolvedHead(nn.Module):
    """Jumper et al. (2021) Suppl. 1.9.10 'Experimentally resolved prediction'.

    Per-atom (atom37) logits (N, 37) that the atom is resolved in a high-resolution structure, from
    the single representation (``c_s`` channels).
    """

    def __init__(self, c_s: int):
        super().__init__()
        self.logits = Linear(c_s, rc.atom_type_num)

    def forward(self, representations: dict, batch: dict | None = None) -> dict:
        return {"logits": self.logits(_fp32(representations["single"]))}


class PredictedAlignedErrorHead(nn.Module):
    """Jumper et al. (2021) Suppl. 1.9.7 'TM-score prediction'.

    Logits (N, N, num_bins) of the error of residue j's position when aligned on residue i's frame,
    from the pair representation (``c_z`` channels), and the bin breaks (num_bins - 1) uniformly
    covering [0, max_error_bin] Å (the last bin is open-ended).
    """

    def __init__(self, cfg: HeadsConfig, c_z: int):
        super().__init__()
        self.cfg = cfg
        self.logits = Linear(c_z, cfg.pae_num_bins)

    def forward(self, representations: dict, batch: dict | None = None) -> dict:
        return {"logits": by_rows(self.logits, representations["pair"]), "breaks": self.breaks()}

    def breaks(self) -> torch.Tensor:
        """The bin breaks (num_bins - 1)."""
        return torch.linspace(0.0, self.cfg.pae_max_error_bin, self.cfg.pae_num_bins - 1)

    def logit_blocks(self, representations: dict):
        """The logits a block of rows at a time: (rows slice, fp32 logits of those rows), for outputs
        that keep only what is computed from them (AlphaFold.predict with compact outputs)."""
        pair = torch.as_tensor(representations["pair"])
        for s in row_blocks(pair):
            yield s, self.logits(pair[s].float())
