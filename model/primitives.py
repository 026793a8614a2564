"""Parameter-holding primitives in the official (haiku) layout, and the residual sum the blocks share.

Convention of the whole `af2cpu.model` package: a module's attribute path mirrors the haiku scope of
its parameters, and each parameter keeps the official name and shape. So
``alphafold/alphafold_iteration/evoformer/preprocess_1d//weights`` is the tensor
``model.alphafold_iteration.evoformer.preprocess_1d.weights`` with shape (22, 256), and loading or
exporting the official ``.npz`` is a mechanical renaming (see ``af2cpu.model.params``). Stacked
haiku blocks (leading layer axis) become ``nn.ModuleList`` entries.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from af2cpu.model import kernels
from af2cpu.model.options import Options
from af2cpu.runtime.products import onednn_bf16_available, onednn_linear


def normal_parameter(*shape: int, std: float) -> nn.Parameter:
    """An N(0, std²) parameter of ``shape`` (``torch.randn · std``), left unfilled on the meta device.

    A network built on the meta device is a skeleton whose parameters are loaded later (official or
    random ones, ``af2cpu.model.params``): a fill would change nothing there, and torch computes meta
    arithmetic in Python, importing torch._dynamo on the first product (1 s).
    """
    if torch.get_default_device().type == "meta":
        return nn.Parameter(torch.empty(*shape))
    return nn.Parameter(torch.randn(*shape) * std)


def add_in_place(act: torch.Tensor, update: torch.Tensor, options: Options | None = None,
                 divisor: torch.Tensor | None = None) -> torch.Tensor:
    """``act += update``; returns ``act``. Where the blocks add a residual update into a representation
    they own (the trunk's pair and MSA, the template pair stack, a block of rows of the pair), so one
    tensor exists instead of the input and its sum: the same numbers as ``act + update``. A bf16 sum with
    ``options`` whose ``elementwise`` takes af2cpu's kernels is theirs (the same numbers, 2-3x as fast; fp32
    sums run at a copy's speed in PyTorch).

    TypeError unless ``update`` has ``act``'s dtype: an in-place sum of another dtype rounds where the
    out-of-place sum promotes, and an out-of-place fallback would be lost where ``act`` is a block of
    rows of a larger tensor (``add_in_place(out[rows], ...)``).

    ``divisor`` (fp32, broadcast along the channels: the outer product mean's counts): ``act += update / divisor``,
    the quotient rounded to ``act``'s dtype, as dividing ``update`` in place first rounds it (which the fallback
    does: ``update`` may be changed). af2cpu's kernel divides as it adds, without PyTorch's fp32 copies of a bf16
    update.
    """
    if update.dtype != act.dtype:
        raise TypeError(f"a residual update of dtype {update.dtype} for a representation of dtype {act.dtype}")
    if (options is not None and act.dtype is torch.bfloat16 and not torch.compiler.is_compiling()
            and not torch.is_grad_enabled() and kernels.uses_elementwise(options.elementwise, act.dtype)
            and kernels.add_into(act, update, divisor)):
        return act
    return act.add_(update if divisor is None else update.div_(divisor))


# Precisions whose runs keep their casts of the weights (kept_weight).
KEPT_DTYPES = (torch.bfloat16, torch.float16)

# What each module keeps, held beside the module rather than in it: the module stays picklable (torch.save; the
# stamps hold weak references) and a copy of it (copy.deepcopy) starts with nothing kept. Dropped with the module.
_KEPT: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def kept_weights(owner: nn.Module) -> dict:
    """What :func:`kept_weight` keeps for ``owner`` now: {key: the weights made}."""
    return {key: entry[1] for key, entry in _KEPT.get(owner, {}).items() if entry is not None}


def kept_weight(owner: nn.Module, key: Hashable, dtype: torch.dtype, sources: Sequence[torch.Tensor],
                build: Callable[[], Any]) -> Any:
    """``build()``: weights made from the parameters ``sources`` of ``owner`` for a product in ``dtype`` (their
    casts, the concatenations the fused products read). In a bf16 (fp16) run it is made once and kept for
    ``owner`` under ``key``, made again when a source has changed: another tensor (load_params assigns new
    ones), its storage swapped, or written in place (its version counter). A bf16 block then casts nothing
    (faster as :func:`linear_layout` says; docs/benchmarks.md, "Kept bf16 weights"), for a bf16 copy of the
    parameters (their size in bf16, which the memory planner counts). fp32 runs keep nothing (their weights are
    the parameters themselves, the few concatenations cost a copy), nor does anything while autograd records
    (the cast belongs in the graph) or torch.compile traces (inductor folds the casts), nor a run whose
    ``options.keep_weights`` is off."""
    if (dtype not in KEPT_DTYPES or torch.is_grad_enabled() or torch.compiler.is_compiling()
            or not getattr(owner, "options", Options).keep_weights):
        return build()
    kept = _KEPT.setdefault(owner, {})
    entry = kept.get(key)
    # Compared by identity: weak references to live tensors would compare the tensors' values.
    if entry is None or len(entry[0]) != len(sources) or not all(
            ref() is p and ptr == p.data_ptr() and version == p._version
            for (ref, ptr, version), p in zip(entry[0], sources, strict=True)):
        kept[key] = None  # the stale copy goes before the new one is made
        entry = kept[key] = (tuple((weakref.ref(p), p.data_ptr(), p._version) for p in sources), build())
    return entry[1]


def linear_layout(w: torch.Tensor) -> torch.Tensor:
    """A bf16 (fp16) ``w`` (k, n) as the transposed view of an (n, k) copy: the layout oneDNN's linear kernel reads
    its weights in (PyTorch's nn.Linear keeps them so); PyTorch's products take either. Kept weights are made so:
    a bf16 block ran 1.07-1.12x as fast as casting each call, 1.04-1.05x keeping the (k, n) layout. fp32 ``w``
    is returned as it is (no copy: fp32 products ran as fast either way, and fp32 runs keep nothing)."""
    return w.t().contiguous().t() if w.dtype in KEPT_DTYPES else w


def weight_as(owner: nn.Module, name: str, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``owner``'s parameter ``name``, reshaped to ``shape`` where given, in ``dtype``: the parameter itself
    where its dtype is the run's, else its cast, kept (:func:`kept_weight`), a matrix in :func:`linear_layout`."""
    param = getattr(owner, name)
    if param.dtype == dtype:
        return param if shape is None else param.reshape(shape)

    def cast() -> torch.Tensor:
        w = (param if shape is None else param.reshape(shape)).to(dtype)
        return linear_layout(w) if w.dim() == 2 else w
    return kept_weight(owner, (name, dtype, shape), dtype, (param,), cast)


# oneDNN's fp32 linear kernel pays a per-call cost that MKL does not: fp32 products of fewer rows stay MKL's. bf16
# products of any height go to it where it has native bf16 (PyTorch's bf16 addmm is oneDNN's too: 9-63 rows took
# the same 29-36 us either way, AMX), so every block size rounds alike.
ONEDNN_MIN_ROWS = 64

# What matmul's ``activation`` names, applied in place where the product is not oneDNN's.
ACTIVATIONS = {"relu": torch.relu_, "sigmoid": torch.sigmoid_}


def through_onednn(x: torch.Tensor, onednn: bool, out: torch.Tensor | None = None) -> bool:
    """Whether a product of ``x`` (the left operand) runs through oneDNN's linear kernel: 2-D, contiguous, into a
    new tensor, without autograd, not traced by torch.compile (inductor picks its own kernels), and either fp32
    of at least ``ONEDNN_MIN_ROWS`` rows where asked for (``onednn``) or bf16 where oneDNN has native bf16 kernels
    (PyTorch runs bf16 products there anyway, but its addmm first copies the bias into the output and the
    activation takes a pass of its own)."""
    if (out is not None or x.dim() != 2 or not x.is_contiguous()
            or torch.is_grad_enabled() or torch.compiler.is_compiling()):
        return False
    if x.dtype == torch.bfloat16:
        return onednn_bf16_available()
    return onednn and x.dtype == torch.float32 and x.shape[0] >= ONEDNN_MIN_ROWS


def matmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, onednn: bool = False,
           out: torch.Tensor | None = None, activation: str | None = None,
           multiply: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(x (N, k) @ w (k, n) + b)``: the products of the network's layers; ``activation`` is
    "relu", "sigmoid" or None. With ``onednn`` (Options.onednn_products: this CPU multiplies fp32 faster with
    oneDNN than with MKL, af2cpu.runtime.products), an fp32 product into a new tensor runs through oneDNN's
    linear kernel instead of PyTorch's MKL: the same sums, in another order (float noise). bf16 products go
    to that kernel wherever it has native bf16. There the bias and the activation are applied to the fp32 sums
    as they are written, before bf16 rounding (bf16: one rounding fewer than PyTorch's addmm and an activation
    after it). A product written into ``out``, an fp32 one of few rows, and any product while torch.compile traces
    stay as PyTorch runs them, the activation applied in place after. ``multiply`` (instead of an activation): a
    tensor of the product's shape and dtype, contiguous, multiplied into it, ``(x @ w + b) * multiply``, by
    oneDNN as it writes the sums where the product is oneDNN's (a gate), in place after it elsewhere."""
    if multiply is not None and (activation is not None or not multiply.is_contiguous()):
        raise ValueError("matmul: multiply takes a contiguous tensor and no activation")
    if through_onednn(x, onednn, out):
        return onednn_linear(x, w, b, activation, multiply)
    if b is None:
        y = x @ w if out is None else torch.mm(x, w, out=out)
    else:
        y = torch.addmm(b, x, w, out=out)
    if multiply is not None:
        return y.mul_(multiply)
    return y if activation is None else ACTIVATIONS[activation](y)


def matmul_row_bias(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, onednn: bool = False) -> torch.Tensor:
    """``x`` (m, k) @ ``w`` (k, n) ``+ b`` (m, 1), a bias per output row: the triangle multiplication's
    channel-first projections (the weight on the left). Through oneDNN as :func:`matmul` decides, its
    bias added after the product (oneDNN's linear kernel adds one per column). bf16 stays PyTorch's: its addmm,
    oneDNN's too, was faster than the product and a pass adding the bias (495 against 622 us, (512, 128) @
    (128, 4096), AMX). With ``b`` None (af2cpu's gate kernel adds it as it reads the product) the product alone:
    PyTorch's bf16 mm (336 us there; addmm 604, as it first copies the bias into its output)."""
    if b is None:
        return torch.mm(x, w) if x.dtype == torch.bfloat16 else matmul(x, w, onednn=onednn)
    if x.dtype == torch.float32 and through_onednn(x, onednn):
        return onednn_linear(x, w, None).add_(b)
    return torch.addmm(b, x, w)


class Linear(nn.Module):
    """haiku.Linear: ``weights`` (in, out) and optional ``bias`` (out,); y = x @ W + b.

    ``num_input``/``num_output`` may be shapes (tuples), as haiku's ``num_input_dims`` and
    multi-axis outputs give (``q_scalar_projection`` (c, heads, c_qk)); ``()`` as ``num_input`` is a
    scalar input (weights (out,)). The trailing input axes are flattened, the output unflattened.
    ``options`` (set_options replaces it) says which library runs its fp32 products.
    """

    options = Options()

    def __init__(self, num_input: int | tuple[int, ...], num_output: int | tuple[int, ...], use_bias: bool = True):
        super().__init__()
        in_shape = (num_input,) if isinstance(num_input, int) else tuple(num_input)
        out_shape = (num_output,) if isinstance(num_output, int) else tuple(num_output)
        self.in_shape, self.out_shape = in_shape, out_shape
        self.weights = nn.Parameter(torch.empty(*in_shape, *out_shape))
        self.bias = nn.Parameter(torch.zeros(out_shape)) if use_bias else None
        # Not on the meta device (see normal_parameter): torch's meta normal_ is a Python
        # decomposition: the first call imports torch._dynamo (1.4 s), each call takes 0.4 ms.
        if not self.weights.is_meta:
            nn.init.normal_(self.weights, std=max(1, math.prod(in_shape))**-0.5)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None, activation: str | None = None,
                multiply: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: a contiguous (N, out) tensor to write into, for 2-D ``x`` with a bias; ``activation``:
        "relu" or "sigmoid" applied to the result; ``multiply``: a contiguous tensor of the result's shape that
        multiplies it, for layers of one input and one output axis (:func:`matmul`: either fused into oneDNN's
        kernel where it runs)."""
        if len(self.in_shape) != 1 or len(self.out_shape) != 1:
            if multiply is not None:
                raise ValueError("Linear: multiply is for layers of one input and one output axis")
            y = self._shaped(x)
            return y if activation is None else ACTIVATIONS[activation](y)
        w = weight_as(self, "weights", x.dtype)
        b = None if self.bias is None else weight_as(self, "bias", x.dtype)
        onednn = self.options.onednn_products
        if x.dim() == 2:
            return matmul(x, w, b, onednn=onednn, out=out, activation=activation, multiply=multiply)
        rows = x.reshape(-1, x.shape[-1])
        return matmul(rows, w, b, onednn=onednn, activation=activation,
                      multiply=None if multiply is None else multiply.view(rows.shape[0], w.shape[-1])
                      ).reshape(*x.shape[:-1], w.shape[-1])

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:x.dim() - len(self.in_shape)]
        k, n = math.prod(self.in_shape), math.prod(self.out_shape)
        y = matmul(x.reshape(-1, k), weight_as(self, "weights", x.dtype, (k, n)), onednn=self.options.onednn_products)
        if self.bias is not None:
            y = y + weight_as(self, "bias", x.dtype, (n,))
        return y.reshape(*lead, *self.out_shape)


class LayerNorm(nn.Module):
    """haiku.LayerNorm over the last axis with ``scale`` and ``offset``; eps 1e-5 as in AlphaFold2.

    Statistics are always computed in fp32 (AlphaFold2 keeps layer-norm statistics in full
    precision); the result is cast back to the input dtype. ``options.elementwise`` says whose kernel
    runs it: PyTorch's, or af2cpu's (af2cpu.model.kernels) where its rows are laid out for it.
    """

    options = Options()

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_channels))
        self.offset = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 scale and offset with bf16 input: both kernels keep the statistics in fp32 and return bf16,
        # without an fp32 copy of the input. Compiled blocks keep PyTorch's, which inductor fuses. af2cpu's
        # kernel reads a block of columns and the channel-first triangle sums where they lie; layouts it does not
        # take (kernels.layer_norm_applies) are copied contiguous first, as PyTorch's kernel copies them itself.
        if (not torch.compiler.is_compiling() and not torch.is_grad_enabled()
                and kernels.uses_elementwise(self.options.elementwise, x.dtype)):
            rows = x if kernels.layer_norm_applies(x) else x.contiguous()
            return kernels.layer_norm(rows, self.scale.float(), self.offset.float(), self.eps)
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.scale.float(), self.offset.float(), self.eps)
