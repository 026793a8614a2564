"""Gated multi-head attention and global attention, the kernels under every attention block.

Parameters keep the official layout: ``query_w`` (c_q, heads, c), ``key_w``/``value_w``
(c_m, heads, c), ``gating_w`` (c_q, heads, c_v), ``gating_b`` (heads, c_v), ``output_w``
(heads, c_v, c_out), ``output_b`` (c_out,). Both modules take a leading batch axis (MSA rows,
MSA columns, pair rows, residue pairs) and can run it in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from af2cpu.model.options import chunk_slices
from torch import nn

# Additive bias of a masked key: the value AlphaFold2 uses, so fully masked rows behave alike.
MASK_BIAS = -1e9


def mask_to_bias(mask: torch.Tensor) -> torch.Tensor:
    """0 where ``mask`` is 1, ``MASK_BIAS`` where it is 0 (AlphaFold2's ``1e9 * (mask - 1)``)."""
    return MASK_BIAS * (1.0 - mask)


def _fan_in_normal(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * shape[0] ** -0.5)


class Attention(nn.Module):
    """Gated multi-head attention with an additive bias.

    Jumper et al. (2021) Suppl. Alg. 7 'MSARowAttentionWithPairBias' lines 2-7 (the kernel shared by
    Algs. 7, 8, 13, 14 and 17): softmax(q·k / sqrt(c) + bias) · v, gated by sigmoid(linear(q_data)).
    """

    def __init__(self, c_q: int, c_m: int, c_out: int, num_head: int, key_dim: int | None = None,
                 value_dim: int | None = None, gating: bool = True):
        super().__init__()
        key_dim = (key_dim or c_q) // num_head
        value_dim = (value_dim or c_m) // num_head
        self.num_head, self.key_dim, self.value_dim, self.gating = num_head, key_dim, value_dim, gating
        self.query_w = _fan_in_normal(c_q, num_head, key_dim)
        self.key_w = _fan_in_normal(c_m, num_head, key_dim)
        self.value_w = _fan_in_normal(c_m, num_head, value_dim)
        if gating:
            self.gating_w = nn.Parameter(torch.zeros(c_q, num_head, value_dim))
            self.gating_b = nn.Parameter(torch.ones(num_head, value_dim))
        self.output_w = _fan_in_normal(num_head, value_dim, c_out)
        self.output_b = nn.Parameter(torch.zeros(c_out))

    def _project(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, N, c_in) @ (c_in, H, c) -> (B, H, N, c)."""
        b, n, _ = x.shape
        return (x @ w.reshape(w.shape[0], -1).to(x.dtype)).view(b, n, w.shape[1], w.shape[2]).transpose(1, 2)

    def _attend(self, q_data, m_data, bias, nonbatched_bias):
        q = self._project(q_data, self.query_w)
        k = self._project(m_data, self.key_w)
        v = self._project(m_data, self.value_w)
        logits_bias = bias if nonbatched_bias is None else bias + nonbatched_bias.unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=logits_bias.to(q.dtype),
                                             scale=self.key_dim**-0.5)  # (B, H, Q, c_v)
        out = out.transpose(1, 2)  # (B, Q, H, c_v)
        if self.gating:
            gate = self._project(q_data, self.gating_w).transpose(1, 2) + self.gating_b.to(out.dtype)
            out = out * torch.sigmoid(gate)
        b, nq = out.shape[:2]
        return torch.addmm(self.output_b.to(out.dtype), out.reshape(b * nq, -1),
                           self.output_w.reshape(-1, self.output_w.shape[-1]).to(out.dtype)).view(b, nq, -1)

    def forward(self, q_data: torch.Tensor, m_data: torch.Tensor, bias: torch.Tensor,
                nonbatched_bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
        """q_data (B, Q, c_q), m_data (B, K, c_m), bias broadcastable to (B, H, Q, K) with a
        leading axis of 1 or B, nonbatched_bias (H, Q, K) shared by the batch -> (B, Q, c_out)."""
        batch = q_data.shape[0]
        if chunk_size is None or chunk_size >= batch:
            return self._attend(q_data, m_data, bias, nonbatched_bias)
        return torch.cat([
            self._attend(q_data[s], m_data[s], bias if bias.shape[0] == 1 else bias[s], nonbatched_bias)
            for s in chunk_slices(batch, chunk_size)
        ])


class GlobalAttention(nn.Module):
    """Global attention: one query per batch element, the masked mean of its rows.

    Jumper et al. (2021) Suppl. Alg. 19 'MSAColumnGlobalAttention' lines 2-7. Keys and values have a
    single head (``key_w``, ``value_w`` of shape (c_m, c)) shared by all query heads; the output
    is gated per query row, as in every AlphaFold2 model.
    """

    def __init__(self, c_q: int, c_m: int, c_out: int, num_head: int):
        super().__init__()
        key_dim = c_q // num_head
        value_dim = c_m // num_head
        self.num_head, self.key_dim, self.value_dim = num_head, key_dim, value_dim
        self.query_w = _fan_in_normal(c_q, num_head, key_dim)
        self.key_w = _fan_in_normal(c_m, key_dim)
        self.value_w = _fan_in_normal(c_m, value_dim)
        self.gating_w = nn.Parameter(torch.zeros(c_q, num_head, value_dim))
        self.gating_b = nn.Parameter(torch.ones(num_head, value_dim))
        self.output_w = _fan_in_normal(num_head, value_dim, c_out)
        self.output_b = nn.Parameter(torch.zeros(c_out))

    def _attend(self, q_data, m_data, q_mask):
        b, n, c_q = q_data.shape
        dtype = q_data.dtype
        # The masked mean and the softmax accumulate in fp32, whatever the activations' dtype.
        # DISCREPANCY: AlphaFold2 adds 1e-10 to the mask count, so a fully masked column averages to 0.
        q_mask = q_mask.float()
        q_avg = ((q_mask * q_data).sum(1) / (q_mask.sum(1) + 1e-10)).to(dtype)  # (B, c_q)
        q = (q_avg @ self.query_w.reshape(c_q, -1).to(dtype)).view(b, self.num_head, self.key_dim)
        q = q * self.key_dim**-0.5
        k = m_data @ self.key_w.to(dtype)  # (B, K, c)
        v = m_data @ self.value_w.to(dtype)
        logits = torch.einsum("bhc,bkc->bhk", q, k).float() + mask_to_bias(q_mask[:, None, :, 0])
        weighted = torch.einsum("bhk,bkc->bhc", torch.softmax(logits, dim=-1).to(dtype), v)
        w_out = self.output_w.reshape(-1, self.output_w.shape[-1]).to(dtype)
        gate = torch.sigmoid((q_data @ self.gating_w.reshape(c_q, -1).to(dtype)).view(b, n, self.num_head, -1)
                             + self.gating_b.to(dtype))
        out = weighted[:, None] * gate  # (B, Q, H, c)
        return torch.addmm(self.output_b.to(dtype), out.reshape(b * n, -1), w_out).view(b, n, -1)

    def forward(self, q_data: torch.Tensor, m_data: torch.Tensor, q_mask: torch.Tensor,
                chunk_size: int | None = None) -> torch.Tensor:
        """q_data, m_data (B, N, c), q_mask (B, N, 1) -> (B, N, c_out)."""
        return torch.cat([self._attend(q_data[s], m_data[s], q_mask[s])
                          for s in chunk_slices(q_data.shape[0], chunk_size)])
