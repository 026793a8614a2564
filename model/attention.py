"""Gated multi-head attention and global attention, the kernels under every attention block.

Parameters keep the official layout: ``query_w`` (c_q, heads, c), ``key_w``/``value_w``
(c_m, heads, c), ``gating_w`` (c_q, heads, c_v), ``gating_b`` (heads, c_v), ``output_w``
(heads, c_v, c_out), ``output_b`` (c_out,). Both modules take a leading batch axis (MSA rows,
MSA columns, pair rows, residue pairs) and can run it in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from af2cpu.model import kernels
from af2cpu.model.options import Options, chunk_slices
from af2cpu.model.primitives import (
    add_in_place,
    kept_weight,
    linear_layout,
    matmul,
    normal_parameter,
    through_onednn,
    weight_as,
)

# Additive bias of a masked key: the value AlphaFold2 uses, so fully masked rows behave alike.
MASK_BIAS = -1e9


def mask_to_bias(mask: torch.Tensor) -> torch.Tensor:
    """0 where ``mask`` is 1, ``MASK_BIAS`` where it is 0 (AlphaFold2's ``1e9 * (mask - 1)``)."""
    return MASK_BIAS * (1.0 - mask)


class Attention(nn.Module):
    """Gated multi-head attention with an additive bias.

    Jumper et al. (2021) Suppl. Alg. 7 'MSARowAttentionWithPairBias' lines 2-7 (the kernel shared by
    Algs. 7, 8, 13, 14 and 17): softmax(q·k / sqrt(c) + bias) · v, gated by sigmoid(linear(q_data)).
    """

    options = Options()  # which library runs its fp32 products (set_options replaces it)

    def __init__(self, c_q: int, c_m: int, c_out: int, num_head: int, key_dim: int | None = None,
                 value_dim: int | None = None, gating: bool = True):
        super().__init__()
        key_dim = (key_dim or c_q) // num_head
        value_dim = (value_dim or c_m) // num_head
        self.num_head, self.key_dim, self.value_dim, self.gating = num_head, key_dim, value_dim, gating
        self.query_w = normal_parameter(c_q, num_head, key_dim, std=c_q**-0.5)
        self.key_w = normal_parameter(c_m, num_head, key_dim, std=c_m**-0.5)
        self.value_w = normal_parameter(c_m, num_head, value_dim, std=c_m**-0.5)
        if gating:
            self.gating_w = nn.Parameter(torch.zeros(c_q, num_head, value_dim))
            self.gating_b = nn.Parameter(torch.ones(num_head, value_dim))
        self.output_w = normal_parameter(num_head, value_dim, c_out, std=num_head**-0.5)
        self.output_b = nn.Parameter(torch.zeros(c_out))

    def _project(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """(B, N, c_in) @ the weights ``name`` (c_in, H, c) -> (B, H, N, c)."""
        b, n, c = x.shape
        heads, size = getattr(self, name).shape[1:]
        product = matmul(x.reshape(b * n, c), weight_as(self, name, x.dtype, (c, heads * size)),
                         onednn=self.options.onednn_products)
        return product.view(b, n, heads, size).transpose(1, 2)

    def _attend(self, q_data, m_data, bias, nonbatched_bias):
        q = self._project(q_data, "query_w")
        k = self._project(m_data, "key_w")
        v = self._project(m_data, "value_w")
        logits_bias = (bias if nonbatched_bias is None else bias + nonbatched_bias.unsqueeze(0)).to(q.dtype)
        scale = self.key_dim**-0.5
        if _af2cpu_kernel(q, k, v, logits_bias, self.options):
            out = kernels.attention(q, k, v, logits_bias, None, scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=logits_bias, scale=scale)  # (B, H, Q, c_v)
        out = out.transpose(1, 2)  # (B, Q, H, c_v)
        if self.gating:
            gate = self._project(q_data, "gating_w").transpose(1, 2) + weight_as(self, "gating_b", out.dtype)
            out = out * torch.sigmoid(gate)
        b, nq = out.shape[:2]
        return matmul(out.reshape(b * nq, -1), self.output_matrix(out.dtype), weight_as(self, "output_b", out.dtype),
                      onednn=self.options.onednn_products).view(b, nq, -1)

    def output_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """The output weights (H, c_v, c_out) as an (H·c_v, c_out) matrix in ``dtype``."""
        heads, size, c_out = self.output_w.shape
        return weight_as(self, "output_w", dtype, (heads * size, c_out))

    def self_attention(self, x: torch.Tensor, mask: torch.Tensor, nonbatched_bias: torch.Tensor | None = None,
                       chunk_size: int | None = None, transposed: bool = False,
                       options: Options | None = None, norm: nn.Module | None = None,
                       add_to: torch.Tensor | None = None) -> torch.Tensor:
        """Gated self-attention along one axis of ``x`` (R, C, c), in ``x``'s own layout.

        Without ``transposed`` each row attends along the columns (batch R, sequence C); with it,
        each column attends along the rows (batch C, sequence R: MSA column attention, triangle
        attention around the ending node), without transposing ``x`` or the result in memory: the
        projections are computed in ``x``'s layout and the attention reads them through strided
        views. ``mask`` (R, C) masks keys; ``nonbatched_bias`` (H, Q, K) is shared by every batch
        element. Batch elements are processed ``chunk_size`` at a time, fewer when
        ``options.block_bytes`` asks for smaller cache blocks. Returns the update (R, C, c_out),
        contiguous in ``x``'s layout.

        Query, key, value and gate come from one GEMM (their weights side by side). The key mask is
        never expanded to (batch, heads, Q, K) for batch elements whose keys are all valid, so the
        pair bias is read through a broadcast view; only runs of batch elements with masked keys
        get a materialised bias, one chunk at a time. With ``norm`` (a layer norm), ``x`` is the
        unnormalised input and each block is normalised as it is projected: the normalised input
        exists one block at a time (the same numbers: the norm is per position). With ``add_to`` (a
        tensor of the output's shape and dtype, ``x`` itself where ``norm`` is given), each block's
        update is added into it as it is computed and ``add_to`` is returned: no whole output. A
        block of batch elements reads only its own rows (columns) of ``x``, and the key mask and the
        shared bias are separate tensors, so adding into ``x`` changes nothing a later block reads.
        """
        heads, ck, cv = self.num_head, self.key_dim, self.value_dim
        c_in = x.shape[-1]
        dtype = x.dtype
        sizes = (heads * ck, heads * ck, heads * cv, heads * cv if self.gating else 0)
        sources = [self.query_w, self.key_w, self.value_w] + ([self.gating_w] if self.gating else [])
        w = kept_weight(self, ("qkvg", dtype), dtype, sources, lambda: linear_layout(
            torch.cat([p.reshape(c_in, -1) for p in sources], dim=1).to(dtype)))
        # Where the product is oneDNN's (bf16, or fp32 where it was faster), the gate's bias rides in it, added to
        # the fp32 sums; elsewhere it is added with the gate's sigmoid. With af2cpu's element-wise kernels
        # (runtime.elementwise) the gate is applied in one pass.
        one_pass_gate = (self.gating and not torch.compiler.is_compiling()
                         and kernels.uses_elementwise(options.elementwise, dtype))
        fused_bias = (kept_weight(self, ("gate bias", dtype), dtype, (self.gating_b,), lambda: torch.cat(
            [self.gating_b.new_zeros(sum(sizes[:3])), self.gating_b.reshape(-1)]).to(dtype)) if self.gating else None)
        w_out = self.output_matrix(dtype)
        b_out = weight_as(self, "output_b", dtype)
        bias2 = None if nonbatched_bias is None else nonbatched_bias.to(dtype).unsqueeze(0)  # (1, H, Q, K)
        batch_dim = 1 if transposed else 0
        seq_len = x.shape[1 - batch_dim]
        options = options or self.options
        onednn = options.onednn_products
        step = options.step_rows(chunk_size, x.shape[batch_dim], seq_len * sum(sizes) * x.element_size())
        # add_to's dtype is add_in_place's check (raised at the first block, before anything is added); its
        # shape is checked here, as a block of it would take a shorter update's rows without a word.
        if add_to is not None and add_to.shape != (*x.shape[:2], w_out.shape[1]):
            raise TypeError(f"an attention update of shape {tuple(x.shape[:2]) + (w_out.shape[1],)} for a tensor "
                            f"of shape {tuple(add_to.shape)}")
        out_full = None if add_to is not None else x.new_empty((*x.shape[:2], w_out.shape[1]))
        for s in chunk_slices(x.shape[batch_dim], step):
            xs = x[:, s] if transposed else x[s]
            if norm is not None:
                xs = norm(xs)
            rows, cols = xs.shape[:2]
            flat = xs.reshape(-1, c_in)
            gate_bias_in = fused_bias is not None and through_onednn(flat, onednn)
            proj = matmul(flat, w, fused_bias if gate_bias_in else None, onednn=onednn).view(rows, cols, -1)
            q, k, v, g = torch.split(proj, sizes, dim=-1)

            q, k, v = (_heads_first(t.view(rows, cols, heads, c), transposed)
                       for t, c in ((q, ck), (k, ck), (v, cv)))
            key_mask = (mask[:, s].t() if transposed else mask[s])  # (batch, seq)
            out = _attend_runs(q, k, v, key_mask, bias2, ck**-0.5, options)  # (batch, H, seq, cv)
            # The kernels return (batch, seq, H, cv) in memory; bring it to x's layout as a view.
            out = out.permute(2, 0, 1, 3) if transposed else out.transpose(1, 2)
            if self.gating and one_pass_gate:  # out * sigmoid(g) in one pass, into a contiguous tensor
                if not gate_bias_in:
                    g.add_(weight_as(self, "gating_b", dtype, (heads * cv,)))
                out = kernels.gated(out.flatten(2), g, None, out.new_empty((rows, cols, heads * cv)))
            elif self.gating:
                g = g.view(rows, cols, heads, cv)
                gate = g.sigmoid_() if gate_bias_in else torch.sigmoid_(g + weight_as(self, "gating_b", dtype))
                out = gate.mul_(out)
            else:
                out = out.contiguous()
            if add_to is not None:  # the block's update, added in place
                add_in_place(add_to[:, s] if transposed else add_to[s],
                             matmul(out.view(rows * cols, -1), w_out, b_out, onednn=onednn).view(rows, cols, -1), options)
            elif transposed and step < x.shape[1]:  # a column block: not contiguous in the result
                out_full[:, s] = matmul(out.view(rows * cols, -1), w_out, b_out, onednn=onednn).view(rows, cols, -1)
            else:  # a block of rows, or every column at once: contiguous in the result
                target = out_full if transposed else out_full[s]
                torch.addmm(b_out, out.view(rows * cols, -1), w_out, out=target.view(rows * cols, -1))
        return add_to if add_to is not None else out_full

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


def _heads_first(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """(R, C, H, c) -> (batch, H, seq, c) as a view: batch R without ``transposed``, C with it."""
    return t.permute(1, 2, 0, 3) if transposed else t.transpose(1, 2)


def _af2cpu_kernel(q, k, v, bias, options: Options) -> bool:
    """Whether this attention runs af2cpu's kernel (af2cpu.model.kernels): as ``options.attention`` decides
    for its dtype and head sizes, where the kernel takes its operands; never inside a compiled block
    (inductor knows PyTorch's kernel, not af2cpu's)."""
    return (not torch.compiler.is_compiling()
            and kernels.uses_kernel(options.attention, q.dtype, q.shape[-1], v.shape[-1])
            and kernels.applies(q, k, v, bias))


def _attend_runs(q, k, v, key_mask, bias2, scale, options: Options):
    """The attention of a batch whose key mask is ``key_mask`` (B, K) and shared bias ``bias2`` (1, H, Q, K).

    af2cpu's kernel (where ``options`` choose it) takes the mask as a key bias beside the shared bias: one
    call, nothing materialised. With PyTorch's kernel (SDPA), batch elements whose keys are all valid need
    no mask term: they run with ``bias2`` alone (a broadcast view). The others get the mask bias; with a
    shared bias that sum is materialised, so it is done per run of consecutive masked elements. A compiled block always applies the mask, the
    sum materialised for the whole step (within the memory planner's bound): looking at the mask on
    the host would split its graph, and ``torch.cond`` around the attention kernel does not compile
    with dynamic shapes (torch 2.13).
    """
    if _af2cpu_kernel(q, k, v, bias2, options):
        key_bias = None if bool(key_mask.bool().all()) else mask_to_bias(key_mask.float()).contiguous()
        return kernels.attention(q, k, v, bias2, key_bias, scale)
    if torch.compiler.is_compiling():
        return _attend_masked(q, k, v, key_mask, bias2, scale)
    valid = key_mask.bool().all(dim=1)
    if bool(valid.all()):
        return _attend_valid(q, k, v, key_mask, bias2, scale)
    if bias2 is None:  # the mask alone broadcasts over heads and queries
        return _attend_masked(q, k, v, key_mask, bias2, scale)
    outs = []
    for start, stop, run_valid in _runs(valid.tolist()):
        s = slice(start, stop)
        attend = _attend_valid if run_valid else _attend_masked
        outs.append(attend(q[s], k[s], v[s], key_mask[s], bias2, scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _attend_valid(q, k, v, key_mask, bias2, scale):
    """SDPA of a batch whose keys are all valid: the shared bias alone (``key_mask`` unread)."""
    del key_mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias2, scale=scale)


def _attend_masked(q, k, v, key_mask, bias2, scale):
    """SDPA with the key mask's bias, plus the shared bias where there is one (materialised)."""
    key_bias = mask_to_bias(key_mask.to(q.dtype))[:, None, None, :]  # (B, 1, 1, K)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias if bias2 is None else key_bias + bias2,
                                          scale=scale)


def _runs(flags: list[bool]):
    """(start, stop, flag) for each maximal run of equal flags."""
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            yield start, i, flags[start]
            start = i


class GlobalAttention(nn.Module):
    """Global attention: one query per batch element, the masked mean of its rows.

    Jumper et al. (2021) Suppl. Alg. 19 'MSAColumnGlobalAttention' lines 2-7. Keys and values have a
    single head (``key_w``, ``value_w`` of shape (c_m, c)) shared by all query heads; the output
    is gated per query row, as in every AlphaFold2 model.
    """

    options = Options()  # which library runs its fp32 products (set_options replaces it)

    def __init__(self, c_q: int, c_m: int, c_out: int, num_head: int):
        super().__init__()
        key_dim = c_q // num_head
        value_dim = c_m // num_head
        self.num_head, self.key_dim, self.value_dim = num_head, key_dim, value_dim
        self.query_w = normal_parameter(c_q, num_head, key_dim, std=c_q**-0.5)
        self.key_w = normal_parameter(c_m, key_dim, std=c_m**-0.5)
        self.value_w = normal_parameter(c_m, value_dim, std=c_m**-0.5)
        self.gating_w = nn.Parameter(torch.zeros(c_q, num_head, value_dim))
        self.gating_b = nn.Parameter(torch.ones(num_head, value_dim))
        self.output_w = normal_parameter(num_head, value_dim, c_out, std=num_head**-0.5)
        self.output_b = nn.Parameter(torch.zeros(c_out))

    def _attend(self, q_data, m_data, q_mask):
        b, n, c_q = q_data.shape
        dtype = q_data.dtype
        # The masked mean and the softmax accumulate in fp32, whatever the activations' dtype; where every row is
        # valid (eager runs check; the extra MSA's rows after padding is dropped) the sum reads the rows as they
        # are, without an fp32 product of mask and rows (a pass over an fp32 copy of the extra MSA's block).
        # DISCREPANCY: AlphaFold2 adds 1e-10 to the mask count, so a fully masked column averages to 0.
        q_mask = q_mask.float()
        if not torch.compiler.is_compiling() and bool(q_mask.bool().all()):
            q_sum = q_data.sum(1, dtype=torch.float32)
        else:
            q_sum = (q_mask * q_data).sum(1)
        q_avg = (q_sum / (q_mask.sum(1) + 1e-10)).to(dtype)  # (B, c_q)
        q = (q_avg @ weight_as(self, "query_w", dtype, (c_q, self.num_head * self.key_dim))).view(
            b, self.num_head, self.key_dim)
        q = q * self.key_dim**-0.5
        onednn = self.options.onednn_products
        m_flat = m_data.reshape(-1, m_data.shape[-1])
        k = matmul(m_flat, weight_as(self, "key_w", dtype), onednn=onednn).view(b, -1, self.key_dim)  # (B, K, c)
        v = matmul(m_flat, weight_as(self, "value_w", dtype), onednn=onednn).view(b, -1, self.value_dim)
        logits = torch.einsum("bhc,bkc->bhk", q, k).float() + mask_to_bias(q_mask[:, None, :, 0])
        weighted = torch.einsum("bhk,bkc->bhc", torch.softmax(logits, dim=-1).to(dtype), v)
        w_out = weight_as(self, "output_w", dtype, (self.num_head * self.value_dim, self.output_w.shape[-1]))
        # The gate (its bias and sigmoid applied as oneDNN writes the product, where it is oneDNN's), then the
        # gated values, in one (B, Q, H, c) tensor: with the input and the output, three tensors of the input's
        # size at most.
        gate = matmul(q_data.reshape(b * n, c_q), weight_as(self, "gating_w", dtype, (c_q, self.num_head * self.value_dim)),
                      weight_as(self, "gating_b", dtype, (self.num_head * self.value_dim,)), onednn=onednn,
                      activation="sigmoid")
        out = gate.view(b, n, self.num_head, -1).mul_(weighted[:, None])  # (B, Q, H, c)
        return matmul(out.reshape(b * n, -1), w_out, weight_as(self, "output_b", dtype), onednn=onednn).view(b, n, -1)

    def forward(self, q_data: torch.Tensor, m_data: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """q_data, m_data (B, N, c), q_mask (B, N, 1) -> (B, N, c_out). Each batch element is
        independent of the others: a caller may run any block of them (MSAColumnGlobalAttention
        runs a block of columns at a time)."""
        return self._attend(q_data, m_data, q_mask)
