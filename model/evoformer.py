"""The Evoformer block and its parts (Jumper et al. 2021, Suppl. 1.6).

Each class returns the *update* of its input (the residual is added by the block), as in the
supplement's pseudocode. Shapes: MSA (S, L, c_m), MSA mask (S, L), pair (L, L, c_z), pair mask (L, L).
Every module with a large intermediate reads its chunk size from ``self.options`` (see
:mod:`af2cpu.model.options`).
"""

from __future__ import annotations

import torch
from torch import nn

from af2cpu.model import kernels
from af2cpu.model.attention import Attention, GlobalAttention
from af2cpu.model.options import Options, chunk_slices, normalised_whole, triangle_product_rows
from af2cpu.model.presets import EvoformerStackConfig
from af2cpu.model.primitives import (
    LayerNorm,
    Linear,
    add_in_place,
    kept_weight,
    linear_layout,
    matmul,
    matmul_row_bias,
    normal_parameter,
    weight_as,
)


class _Chunked(nn.Module):
    """A module that reads chunk sizes from an :class:`Options` object (replaced by set_options)."""

    def __init__(self):
        super().__init__()
        self.options = Options()


def _normed_pair_bias(pair: torch.Tensor, norm: nn.Module, weights: torch.Tensor, options: Options,
                      transposed: bool = False) -> torch.Tensor:
    """``_pair_bias(norm(pair), weights, transposed)``, a block of pair rows at a time: the normalised
    pair (L² · c_z, several GiB at long lengths) exists one block at a time, the bias (H, L, L) whole."""
    n_res, _, c_z = pair.shape
    bias = pair.new_empty((weights.shape[1], n_res, n_res))
    for s in chunk_slices(n_res, options.step_rows(None, n_res, n_res * c_z * pair.element_size())):
        if transposed:
            bias[:, :, s] = _pair_bias(norm(pair[s]), weights, transposed=True)
        else:
            bias[:, s] = _pair_bias(norm(pair[s]), weights)
    return bias


def _normed_or_blocks(act: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, nn.Module | None]:
    """The attention's input and the norm it still applies (Attention.self_attention's ``norm``):
    small inputs normalised once, whole (options.normalised_whole: one layer norm, faster at normal
    sizes); larger ones a block at a time as the attention reads them (no whole normalised copy)."""
    if normalised_whole(act.numel() * act.element_size()):
        return norm(act), None
    return act, norm


def _pair_bias(pair: torch.Tensor, weights: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """The per-head attention bias from the pair representation: (H, Q, K), contiguous.

    ``pair`` (L, L, c_z) @ ``weights`` (c_z, H) is one GEMM; the bias of query q and key k is
    pair[q, k] without ``transposed``, pair[k, q] with it (attention along the columns)."""
    bias = (pair.reshape(-1, pair.shape[-1]) @ weights.to(pair.dtype)).view(*pair.shape[:2], -1)
    return (bias.permute(2, 1, 0) if transposed else bias.permute(2, 0, 1)).contiguous()


class MSARowAttentionWithPairBias(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 7 'MSARowAttentionWithPairBias'."""

    def __init__(self, c_m: int, c_z: int, num_head: int):
        super().__init__()
        self.query_norm = LayerNorm(c_m)
        self.feat_2d_norm = LayerNorm(c_z)
        self.feat_2d_weights = normal_parameter(c_z, num_head, std=c_z**-0.5)
        self.attention = Attention(c_m, c_m, c_m, num_head)

    def forward(self, msa: torch.Tensor, msa_mask: torch.Tensor, pair: torch.Tensor,
                inplace: bool = False) -> torch.Tensor:
        """The update of ``msa``; with ``inplace``, ``msa`` plus its update, added into ``msa`` a block of
        rows at a time (each row attends along its own columns)."""
        pair_bias = _normed_pair_bias(pair, self.feat_2d_norm, self.feat_2d_weights, self.options)
        act, norm = _normed_or_blocks(msa, self.query_norm)
        return self.attention.self_attention(act, msa_mask, pair_bias, self.options.chunks.msa_row_attention,
                                             options=self.options, norm=norm, add_to=msa if inplace else None)


class MSAColumnAttention(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 8 'MSAColumnAttention'."""

    def __init__(self, c_m: int, num_head: int):
        super().__init__()
        self.query_norm = LayerNorm(c_m)
        self.attention = Attention(c_m, c_m, c_m, num_head)

    def forward(self, msa: torch.Tensor, msa_mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The update of ``msa``; with ``inplace``, ``msa`` plus its update, added into ``msa`` a block of
        columns at a time (each column attends along its own rows)."""
        # Each column attends along the rows: the MSA is not transposed in memory (see
        # Attention.self_attention).
        act, norm = _normed_or_blocks(msa, self.query_norm)
        return self.attention.self_attention(act, msa_mask, None, self.options.chunks.msa_column_attention,
                                             transposed=True, options=self.options, norm=norm,
                                             add_to=msa if inplace else None)


class MSAColumnGlobalAttention(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 19 'MSAColumnGlobalAttention' (extra-MSA stack)."""

    def __init__(self, c_m: int, num_head: int):
        super().__init__()
        self.query_norm = LayerNorm(c_m)
        self.attention = GlobalAttention(c_m, c_m, c_m, num_head)

    def forward(self, msa: torch.Tensor, msa_mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The update of ``msa``; with ``inplace``, ``msa`` plus its update, added into ``msa`` a block
        of columns at a time.

        Every column's global attention reads that column alone (its query is the masked mean of
        the column's normalised rows, its keys and values the rows), so a block of columns (its
        transposed slice's layer norm, the attention, the output) is exact, and adding a block's
        update in place changes nothing a later block reads. Columns per block:
        ``Options.norm_block_rows`` (whole at normal sizes; the extra MSA's 5120 rows at long lengths
        would otherwise take several GiB per whole tensor), within ``chunks.msa_column_attention``.
        """
        n_seq, n_res, c = msa.shape
        step = self.options.norm_block_rows(self.options.chunks.msa_column_attention, n_res,
                                            n_seq * c * msa.element_size())
        out = None if inplace or step >= n_res else torch.empty_like(msa)
        for s in chunk_slices(n_res, step):
            normed = self.query_norm(msa[:, s].transpose(0, 1))  # (columns, rows, c), contiguous
            update = self.attention(normed, normed, msa_mask[:, s].t()[..., None]).transpose(0, 1)
            del normed
            if inplace:
                add_in_place(msa[:, s], update, self.options)
            elif out is None:  # one block: the update as the attention wrote it (a transposed view)
                return update
            else:
                out[:, s] = update
        return msa if inplace else out


class Transition(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 9 'MSATransition' and Alg. 15 'PairTransition'.

    The two algorithms are the same computation (layer norm, widen by ``factor``, ReLU, narrow), so
    one class serves both.
    """

    def __init__(self, c: int, factor: int):
        super().__init__()
        self.input_layer_norm = LayerNorm(c)
        self.transition1 = Linear(c, c * factor)
        self.transition2 = Linear(c * factor, c)

    def forward(self, act: torch.Tensor, mask: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
        """The update of ``act``; with ``inplace``, ``act`` plus its update, added into ``act`` a block of
        rows at a time (the transition is per position)."""
        # DISCREPANCY: the mask is accepted for a uniform block interface but, as in the released
        # model, not applied; masked positions are never read by unmasked ones downstream.
        del mask
        c = act.shape[-1]
        out = None if inplace else torch.empty_like(act)
        row_bytes = act[0].numel() // c * self.transition1.weights.shape[1] * act.element_size()
        for s in chunk_slices(act.shape[0], self.options.step_rows(self.options.chunks.transition, act.shape[0],
                                                                   row_bytes)):
            x = self.input_layer_norm(act[s]).reshape(-1, c)
            update = self.transition2(self.transition1(x, activation="relu"), out=None if inplace else out[s].view(-1, c))
            if inplace:
                add_in_place(act[s], update.view(act[s].shape), self.options)
        return act if inplace else out


class OuterProductMean(_Chunked):
    """Jumper et al. (2021) Suppl. Alg. 10 'OuterProductMean'."""

    def __init__(self, c_m: int, c_z: int, num_outer_channel: int):
        super().__init__()
        self.layer_norm_input = LayerNorm(c_m)
        self.left_projection = Linear(c_m, num_outer_channel)
        self.right_projection = Linear(c_m, num_outer_channel)
        self.output_w = normal_parameter(num_outer_channel, num_outer_channel, c_z, std=num_outer_channel**-1.0)
        self.output_b = nn.Parameter(torch.zeros(c_z))

    def forward(self, msa: torch.Tensor, msa_mask: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """The pair update; with ``add_to`` (the pair, which this module does not read), the pair plus
        its update, added into it a block of rows at a time as they are computed (the update never
        exists whole; each block is divided and rounded as the whole update would be)."""
        left, right = self._masked_projections(msa, msa_mask)  # (L, c, S) and (S, L, c)
        n_seq, _, c = right.shape
        c_z = self.output_w.shape[-1]
        b = weight_as(self, "output_b", msa.dtype)
        # Two orders of the same sums. Outer products first: S*c*c + c*c*c_z products per residue
        # pair. The output weights folded into the left projection first: S*c*c_z per pair (plus an
        # L-sized term), fewer below c*c_z / (c_z - c) rows (42 in AlphaFold2); its batched products
        # (inner size S*c) run slower than the outer-first GEMMs, so it is taken below half that (21
        # rows; measured faster in fp32 and bf16 up to 24 rows at L=256, 10-16x for one row at L=320):
        # single sequences, orphan targets, and the extra-MSA stack of most targets (one masked row).
        blocks = (self._few_rows if 2 * n_seq * (c * c_z - c * c) < c * c * c_z else self._outer_first)
        # DISCREPANCY: the bias is added before dividing by the number of sequence pairs (+1e-3),
        # as the released weights expect; the paper's pseudocode adds it after the mean.
        # The count of sequence pairs stays fp32 (bf16 holds integers exactly only up to 256).
        mask32 = msa_mask.float()
        norm = torch.einsum("si,sj->ij", mask32, mask32)[..., None].add_(1e-3)
        if add_to is not None:
            for s, block in blocks(left, right, b):
                add_in_place(add_to[s], block, self.options, divisor=norm[s])
            return add_to
        # Each block divided as it is written: a bf16 output divided in place by fp32 counts goes through
        # fp32 temporaries of the block's size (two fp32 pair-sized copies at once if whole).
        n_res = right.shape[1]
        out = right.new_empty((n_res, n_res, c_z))
        for s, block in blocks(left, right, b, out):
            block.div_(norm[s])
        return out

    def _masked_projections(self, msa: torch.Tensor, msa_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked left and right projections of the normalised MSA, the left one with its rows
        last, (L, c, S), the right one (S, L, c); one GEMM a block of MSA rows at a time: the normalised
        MSA and the unmasked projections exist one block at a time (the extra-MSA stack's 5120 rows at
        long lengths: several GiB each). The left projection is written transposed as it is computed
        (a strided copy of S*L*c), so each step of :meth:`_outer_first` has a contiguous left operand,
        which oneDNN's kernel needs (primitives.matmul)."""
        n_seq, n_res, c_m = msa.shape
        layers = (self.left_projection, self.right_projection)
        w, bias = kept_weight(self, ("left and right", msa.dtype), msa.dtype,
                              [p for layer in layers for p in (layer.weights, layer.bias)], lambda: (
                                  linear_layout(torch.cat([layer.weights for layer in layers], dim=1).to(msa.dtype)),
                                  torch.cat([layer.bias for layer in layers]).to(msa.dtype)))
        c = w.shape[1] // 2
        mask = msa_mask[..., None].to(msa.dtype)
        left, right = msa.new_empty((n_res, c, n_seq)), msa.new_empty((n_seq, n_res, c))
        for s in chunk_slices(n_seq, self.options.step_rows(None, n_seq, n_res * (c_m + 2 * c) * msa.element_size())):
            both = matmul(self.layer_norm_input(msa[s]).reshape(-1, c_m), w, bias,
                          onednn=self.options.onednn_products).view(-1, n_res, 2 * c)
            both.mul_(mask[s])
            left[..., s], right[s] = both[..., :c].permute(1, 2, 0), both[..., c:]
        return left, right

    def _outer_first(self, left: torch.Tensor, right: torch.Tensor, b: torch.Tensor,
                     out: torch.Tensor | None = None):
        """out[i, j] = flatten(sum_s left[s, i] (x) right[s, j]) @ W + b, a block of rows i at a time:
        yields (rows, block), the block written into ``out[rows]`` when given. ``left`` is (L, c, S).

        The outer products are a GEMM per step, (rows*c, S) @ (S, L*c), through oneDNN where the run's
        fp32 products are oneDNN's: presented as an AMD CPU, MKL ran them at 116-138 GFLOP/s, oneDNN at
        219-239 (L=128 with 64 rows, L=64 with 133)."""
        n_seq, n_res, c = right.shape
        w = weight_as(self, "output_w", left.dtype, (c * c, self.output_w.shape[-1]))
        right_flat = right.reshape(n_seq, -1)  # (S, L*c)
        onednn = self.options.onednn_products
        step = self.options.step_rows(self.options.chunks.outer_product_mean, n_res,
                                      n_res * c * c * left.element_size())
        for s in chunk_slices(n_res, step):
            outer = matmul(left[s].view(-1, n_seq), right_flat, onednn=onednn).view(-1, c, n_res, c)  # (l, c, L, c)
            block = matmul(outer.transpose(1, 2).reshape(-1, c * c), w, b, onednn=onednn,
                           out=None if out is None else out[s].view(-1, w.shape[1]))
            yield s, block.view(-1, n_res, w.shape[1])

    def _few_rows(self, left: torch.Tensor, right: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None):
        """The same sums, W folded into the left side first: out[i, j] = sum_{s,b} T[i, s, b] right[s, j, b]
        + bias, with T[i, s, b] = sum_a left[s, i, a] W[a, b] (c_z-vectors); a block of rows i at a time,
        yielded as in :meth:`_outer_first` (``left`` (L, c, S))."""
        n_seq, n_res, c = right.shape
        c_z = self.output_w.shape[-1]
        w = weight_as(self, "output_w", left.dtype, (c, c * c_z))  # (a, b*c_z)
        right_t = right.permute(1, 0, 2).reshape(n_res, n_seq * c)  # (j, s*b): a copy of S*L*c
        left_t = left.transpose(1, 2)  # (L, S, c), a view
        step = self.options.step_rows(self.options.chunks.outer_product_mean, n_res,
                                      (n_seq * c + n_res) * c_z * left.element_size())
        for s in chunk_slices(n_res, step):
            t = matmul(left_t[s].reshape(-1, c), w, onednn=self.options.onednn_products).view(-1, n_seq * c, c_z)
            # Not matmul(..., out=out[s]): with Intel Extension for PyTorch loaded (runtime.backend=ipex),
            # a 2-D @ 3-D matmul into a view of a larger tensor writes to a resized copy instead.
            yield s, torch.add(right_t @ t, b, out=None if out is None else out[s])  # (l, L, c_z)


class _TriangleMultiplication(_Chunked):
    """Shared body of the two triangle multiplications.

    The monomer's files hold four input projections (``left_projection``, ``right_projection``,
    ``left_gate``, ``right_gate``); with ``fused`` (multimer v3) they are two layers of 2c outputs,
    ``projection`` and ``gate`` (left half, then right half), and the layer norms are called
    ``left_norm_input`` and ``center_norm``. The computation is the same.
    """

    outgoing: bool

    def __init__(self, c_z: int, num_intermediate_channel: int, fused: bool = False):
        super().__init__()
        c = num_intermediate_channel
        self.fused = fused
        if fused:
            self.left_norm_input = LayerNorm(c_z)
            self.projection = Linear(c_z, 2 * c)
            self.gate = Linear(c_z, 2 * c)
            self.center_norm = LayerNorm(c)
        else:
            self.layer_norm_input = LayerNorm(c_z)
            self.left_projection = Linear(c_z, c)
            self.right_projection = Linear(c_z, c)
            self.left_gate = Linear(c_z, c)
            self.right_gate = Linear(c_z, c)
            self.center_layer_norm = LayerNorm(c)
        self.output_projection = Linear(c, c_z)
        self.gating_linear = Linear(c_z, c_z)

    def _input_layers(self) -> tuple[LayerNorm, list[Linear], LayerNorm]:
        """The input layer norm, the input projections in the order left, right, left gate, right
        gate (as weight blocks), and the centre layer norm."""
        if self.fused:
            return self.left_norm_input, [self.projection, self.gate], self.center_norm
        return (self.layer_norm_input, [self.left_projection, self.right_projection, self.left_gate,
                                         self.right_gate], self.center_layer_norm)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The update of ``pair``; with ``inplace``, ``pair`` plus its update, added into ``pair`` a block
        of rows at a time (the update never exists whole; the sums are done before any row changes)."""
        if self.options.chunks.triangle_channels is not None:
            return self._forward_in_channel_slabs(pair, pair_mask, self.options.chunks.triangle_channels, inplace)
        layer_norm_input, layers, center_layer_norm = self._input_layers()
        act = layer_norm_input(pair)
        n_rows, n_res, c_z = act.shape
        dtype = act.dtype
        # The four projections that read `act` (left, right and their gates) are one GEMM that writes
        # them channel-first: W^T @ act^T reads act through a transposed view, so the triangle sums
        # below are batched GEMMs over contiguous (L, L) planes with no copy. The GEMM runs a block
        # of pair rows at a time; the block's gates are applied while it is in cache, so only the
        # gated left and right projections, (2c, L, L), exist whole.
        w_t, b = kept_weight(self, ("projections", dtype), dtype, [p for layer in layers for p in (layer.weights, layer.bias)],
                             lambda: (torch.cat([layer.weights for layer in layers], dim=1).to(dtype).t().contiguous(),
                                      torch.cat([layer.bias for layer in layers]).to(dtype)[:, None]))
        onednn = self.options.onednn_products
        c = w_t.shape[0] // 4
        act_t = act.reshape(-1, c_z).t()  # (c_z, L*L), a view
        # Eager runs skip the mask when it is all ones; a compiled block always applies it (reading the
        # mask on the host would split the graph; inductor fuses the product into the gate).
        mask = (pair_mask.to(dtype) if torch.compiler.is_compiling() or not bool(pair_mask.bool().all())
                else None)
        proj = act.new_empty((2 * c, n_rows, n_res))  # gated left and right, (2c, L, L)
        step = self.options.step_rows(self.options.chunks.triangle_multiplication, n_rows,
                                      n_res * 4 * c * act.element_size())
        gates = _Gates(self.options, dtype, pair_mask, mask, b, [layer.bias for layer in layers])
        for s in chunk_slices(n_rows, step):
            rows = s.stop - s.start
            block = matmul_row_bias(w_t, act_t[:, s.start * n_res:s.stop * n_res], gates.product_bias,
                                    onednn=onednn).view(4 * c, rows, n_res)
            gates.apply(block, s, proj[:, s])
        left, right = proj[:c], proj[c:]  # (c, L, L)
        if self.outgoing:  # out[i, j] = sum_k left[i, k] * right[j, k]
            a, b_ = left, right.transpose(1, 2)
        else:  # out[i, j] = sum_k left[k, j] * right[k, i]
            a, b_ = right.transpose(1, 2), left
        # The triangle sums, c batched GEMMs, take at least TRIANGLE_PRODUCT_ROWS output rows at once
        # (fewer make the GEMMs too flat to run fast); the centre layer norm, output projection and
        # gate then take the cache-sized step within that block.
        out = None if inplace else torch.empty_like(act)
        for ps in chunk_slices(n_rows, triangle_product_rows(step, n_rows,
                                                             self.options.chunks.triangle_multiplication)):
            tri_block = torch.bmm(a[:, ps], b_)  # (c, rows, L)
            for s in chunk_slices(ps.stop - ps.start, step):
                rows = slice(ps.start + s.start, ps.start + s.stop)
                # The centre layer norm reads the channel-first sums as they are (kernels.layer_norm); the gate
                # multiplies the output projection as oneDNN writes it, where the product is oneDNN's (out of
                # place too, then copied: both ways round alike).
                tri = center_layer_norm(tri_block[:, s].permute(1, 2, 0)).reshape(-1, c)
                gate = self.gating_linear(act[rows].reshape(-1, c_z), activation="sigmoid")
                out_s = self.output_projection(tri, multiply=gate)
                if inplace:
                    add_in_place(pair[rows], out_s.view(pair[rows].shape), self.options)
                else:
                    out[rows].view(-1, c_z).copy_(out_s)
        return pair if inplace else out

    def _forward_in_channel_slabs(self, pair: torch.Tensor, pair_mask: torch.Tensor, slab: int,
                                  inplace: bool = False) -> torch.Tensor:
        """``forward`` for long sequences: the projections and triangle sums a slab of ``slab``
        intermediate channels at a time, the input layer norm recomputed for each block of rows that
        needs it. Whole tensors: the triangle sums (c, L, L) and the output, in the pair's dtype;
        the normalised pair and the four projections exist a block or a slab at a time."""
        layer_norm_input, layers, center_layer_norm = self._input_layers()
        n_rows, n_res, c_z = pair.shape
        dtype = pair.dtype
        w = torch.cat([layer.weights for layer in layers], dim=1)  # (c_z, 4c): left, right, gates
        bias = torch.cat([layer.bias for layer in layers])
        c = w.shape[1] // 4
        mask = None if bool(pair_mask.bool().all()) else pair_mask.to(dtype)
        onednn = self.options.onednn_products
        step = self.options.step_rows(self.options.chunks.triangle_multiplication, n_rows,
                                      n_res * 4 * min(slab, c) * pair.element_size())
        tri = pair.new_empty((c, n_rows, n_res))
        for cs in chunk_slices(c, slab):
            width = cs.stop - cs.start
            index = torch.cat([torch.arange(cs.start, cs.stop) + k * c for k in range(4)])
            w_t, b = w[:, index].to(dtype).t().contiguous(), bias[index].to(dtype)[:, None]
            proj = pair.new_empty((2 * width, n_rows, n_res))  # the slab's gated left and right
            gates = _Gates(self.options, dtype, pair_mask, mask, b, [bias[index]])
            for s in chunk_slices(n_rows, step):
                rows = s.stop - s.start
                act_t = layer_norm_input(pair[s]).reshape(-1, c_z).t()
                block = matmul_row_bias(w_t, act_t, gates.product_bias, onednn=onednn).view(4 * width, rows, n_res)
                gates.apply(block, s, proj[:, s])
            left, right = proj[:width], proj[width:]
            if self.outgoing:
                torch.bmm(left, right.transpose(1, 2), out=tri[cs])
            else:
                torch.bmm(right.transpose(1, 2), left, out=tri[cs])
            del proj, left, right
        # With inplace each block of rows is updated after its gate has read it; no later block reads it.
        out = None if inplace else torch.empty_like(pair)
        for s in chunk_slices(n_rows, self.options.step_rows(self.options.chunks.triangle_multiplication, n_rows,
                                                             n_res * 4 * c * pair.element_size())):
            normed = center_layer_norm(tri[:, s].permute(1, 2, 0)).reshape(-1, c)
            gate = self.gating_linear(layer_norm_input(pair[s]).reshape(-1, c_z), activation="sigmoid")
            out_s = self.output_projection(normed, multiply=gate)
            if inplace:
                add_in_place(pair[s], out_s.view(pair[s].shape), self.options)
            else:
                out[s].view(-1, c_z).copy_(out_s)
        return pair if inplace else out


class _Gates:
    """The triangle multiplication's gated projections: ``out`` = left and right * sigmoid(their gates) * the pair
    mask, from a block of the channel-first projections (4c, rows, L), in one pass with af2cpu's element-wise
    kernel (runtime.elementwise), else as PyTorch runs it (the gates' sigmoid in place, then the product).
    ``mask`` is the pair mask in the activations' ``dtype``, or None where every pair is valid; ``bias`` the four
    projections' biases in that dtype, (4c, 1), and ``biases32`` the same as fp32 pieces to concatenate. The
    projections' product adds ``product_bias``: ``bias``, or None where af2cpu's kernel adds the fp32 biases as
    it reads the product (the product then skips the bias copy into its output that PyTorch's bf16 addmm
    makes first)."""

    def __init__(self, options: Options, dtype: torch.dtype, pair_mask: torch.Tensor, mask: torch.Tensor | None,
                 bias: torch.Tensor, biases32: list[torch.Tensor]):
        self.mask = mask
        self.one_pass = not torch.compiler.is_compiling() and kernels.uses_elementwise(options.elementwise, dtype)
        self.mask32 = None if mask is None or not self.one_pass else pair_mask.float()
        self.product_bias = None if self.one_pass else bias
        self.bias32 = torch.cat(biases32).float() if self.one_pass else None

    def apply(self, block: torch.Tensor, rows: slice, out: torch.Tensor) -> None:
        half = block.shape[0] // 2
        if self.one_pass:  # views, never copies: out is a block of the whole projections
            mask = None if self.mask32 is None else self.mask32[rows].reshape(-1)
            kernels.gated(block[:half].view(half, 1, -1), block[half:].view(half, 1, -1), mask,
                          out.view(half, 1, -1), (self.bias32[:half], self.bias32[half:]))
            return
        gate = block[half:].sigmoid_()
        if self.mask is not None:
            gate.mul_(self.mask[rows])
        torch.mul(block[:half], gate, out=out)


class TriangleMultiplicationOutgoing(_TriangleMultiplication):
    """Jumper et al. (2021) Suppl. Alg. 11 'TriangleMultiplicationOutgoing'."""

    outgoing = True


class TriangleMultiplicationIncoming(_TriangleMultiplication):
    """Jumper et al. (2021) Suppl. Alg. 12 'TriangleMultiplicationIncoming'."""

    outgoing = False


class _TriangleAttention(_Chunked):
    """Shared body of the two triangle attentions; ending node works on the transposed pair."""

    starting: bool

    def __init__(self, c_z: int, num_head: int, key_dim: int | None = None, value_dim: int | None = None):
        super().__init__()
        self.query_norm = LayerNorm(c_z)
        self.feat_2d_weights = normal_parameter(c_z, num_head, std=c_z**-0.5)
        self.attention = Attention(c_z, c_z, c_z, num_head, key_dim, value_dim)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The update of ``pair``; with ``inplace``, ``pair`` plus its update, added into ``pair`` a block
        of rows (columns, for the ending node) at a time, after the bias is computed from the whole
        pair: each block attends along its own row (column) with that bias."""
        # The ending node attends along the columns of the pair: the same computation on the
        # transposed pair, done through strided views instead of transposed copies. The normalised
        # pair exists a block of rows (or columns) at a time, for the bias and for the attention.
        act, norm = _normed_or_blocks(pair, self.query_norm)
        if norm is None:  # small: normalised once, whole
            tri_bias = _pair_bias(act, self.feat_2d_weights, transposed=not self.starting)
        else:
            tri_bias = _normed_pair_bias(pair, self.query_norm, self.feat_2d_weights, self.options,
                                         transposed=not self.starting)
        return self.attention.self_attention(act, pair_mask, tri_bias, self.options.chunks.triangle_attention,
                                             transposed=not self.starting, options=self.options, norm=norm,
                                             add_to=pair if inplace else None)


class TriangleAttentionStartingNode(_TriangleAttention):
    """Jumper et al. (2021) Suppl. Alg. 13 'TriangleAttentionStartingNode'."""

    starting = True


class TriangleAttentionEndingNode(_TriangleAttention):
    """Jumper et al. (2021) Suppl. Alg. 14 'TriangleAttentionEndingNode'."""

    starting = False


class EvoformerIteration(nn.Module):
    """Jumper et al. (2021) Suppl. Alg. 6 'EvoformerStack' lines 2-10: one Evoformer block.

    With ``stack.global_column_attention`` it is the block of Alg. 18 'ExtraMsaStack': global column
    attention instead of column attention. ``stack`` gives the MSA width and the modules' sizes,
    ``c_z`` the pair representation's width.
    """

    def __init__(self, stack: EvoformerStackConfig, c_z: int):
        super().__init__()
        c_m, tri = stack.msa_channel, stack.num_intermediate_channel
        self.global_column_attention = stack.global_column_attention
        self.msa_row_attention_with_pair_bias = MSARowAttentionWithPairBias(c_m, c_z, stack.msa_num_head)
        if stack.global_column_attention:
            self.msa_column_global_attention = MSAColumnGlobalAttention(c_m, stack.msa_num_head)
        else:
            self.msa_column_attention = MSAColumnAttention(c_m, stack.msa_num_head)
        self.msa_transition = Transition(c_m, stack.msa_transition_factor)
        self.outer_product_mean = OuterProductMean(c_m, c_z, stack.num_outer_channel)
        fused = stack.fuse_projection_weights
        self.triangle_multiplication_outgoing = TriangleMultiplicationOutgoing(c_z, tri, fused)
        self.triangle_multiplication_incoming = TriangleMultiplicationIncoming(c_z, tri, fused)
        self.outer_product_mean_first = stack.outer_product_mean_first
        self.triangle_attention_starting_node = TriangleAttentionStartingNode(c_z, stack.triangle_num_head)
        self.triangle_attention_ending_node = TriangleAttentionEndingNode(c_z, stack.triangle_num_head)
        self.pair_transition = Transition(c_z, stack.pair_transition_factor)

    def forward(self, msa, pair, msa_mask, pair_mask, inplace: bool = False):
        """Returns the updated (msa, pair).

        With ``inplace`` each module's update is added into ``msa`` and ``pair`` themselves (the
        caller's tensors change and are returned): one pair and one MSA tensor exist instead of the
        input and its sum. The trunk's eager stacks pass it for the representations they own; every
        update has the representation's dtype, so the sums are the same numbers as out of place.
        """
        def update(module, act, *args):
            # In place, each module adds its update into `act` a block of rows (columns) at a time.
            return module(act, *args, inplace=True) if inplace else act + module(act, *args)

        def add_outer_product_mean(pair, msa):  # in place, a block of rows at a time
            return (self.outer_product_mean(msa, msa_mask, add_to=pair) if inplace
                    else pair + self.outer_product_mean(msa, msa_mask))

        if self.outer_product_mean_first:  # AlphaFold-Multimer (Evans et al. 2022, Suppl. 2.2)
            pair = add_outer_product_mean(pair, msa)
        msa = update(self.msa_row_attention_with_pair_bias, msa, msa_mask, pair)
        msa = update(self.msa_column_global_attention if self.global_column_attention else self.msa_column_attention,
                     msa, msa_mask)
        msa = update(self.msa_transition, msa, msa_mask)
        if not self.outer_product_mean_first:
            pair = add_outer_product_mean(pair, msa)
        for module in (self.triangle_multiplication_outgoing, self.triangle_multiplication_incoming,
                       self.triangle_attention_starting_node, self.triangle_attention_ending_node,
                       self.pair_transition):
            pair = update(module, pair, pair_mask)
        return msa, pair
