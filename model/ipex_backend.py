"""The optional Intel Extension for PyTorch back end (``runtime.backend=ipex``; native is the default).

``ipex.optimize`` on its own changes nothing in this network: it prepacks ``torch.nn.Linear`` (and
convolutions), and our layers are haiku-layout :class:`~af2cpu.model.primitives.Linear` modules
(weights (in, out)), so it returned an unchanged copy. This back end therefore turns each plain
``Linear`` (one input and one output axis) into :class:`IpexLinear`, which runs its GEMM through an
IPEX-prepacked oneDNN linear, packed once per activation dtype (fp32, or bf16 in the trunk) on first use
and again after its weights change. Everything else (attention, the triangle products, the outer
product mean, the projections fused from several layers' weights, layer norms) stays PyTorch's own.
The parameters keep their names, shapes and fp32 values, so loading and exporting work as before.

intel-extension-for-pytorch was archived upstream; its last release (2.8.0) needs torch 2.8 exactly
(``make test-ipex`` builds such a venv; docs/benchmarks.md has its figures).
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from af2cpu.errors import ConfigError
from af2cpu.model.primitives import ACTIVATIONS, Linear

_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def import_ipex():
    """The ``intel_extension_for_pytorch`` module, or a ConfigError saying what to do instead."""
    try:
        wanted = importlib.metadata.version("intel-extension-for-pytorch")
    except importlib.metadata.PackageNotFoundError:
        wanted = None
    fix = ("see `make test-ipex` (README). Use runtime.backend=native (the default: bf16 and compile are "
           "built in natively)")
    # IPEX refuses any other torch than its own major.minor, and not with an ImportError (2.8.0 calls
    # os.exit, which does not exist): checked here first.
    if wanted is not None and wanted.split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
        raise ConfigError(f"runtime.backend=ipex: intel-extension-for-pytorch {wanted} needs torch "
                          f"{'.'.join(wanted.split('.')[:2])}, this is torch {torch.__version__}; {fix}")
    try:
        import intel_extension_for_pytorch as ipex  # deferred: an optional dependency
    except ImportError as exc:
        raise ConfigError(
            f"runtime.backend=ipex needs intel-extension-for-pytorch, which cannot be imported here ({exc}); "
            f"it was archived upstream and needs its matching torch (2.8; this is {torch.__version__}); {fix}"
        ) from None
    return ipex


class IpexLinear(Linear):
    """A :class:`Linear` whose GEMM runs through IPEX's prepacked oneDNN linear (see the module doc)."""

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None, activation: str | None = None,
                multiply: torch.Tensor | None = None) -> torch.Tensor:
        # Compiled blocks (runtime.compile=true) keep PyTorch's GEMMs: inductor plans those itself, and
        # IPEX's packed op and its cache are opaque to the graph.
        if (len(self.in_shape) != 1 or len(self.out_shape) != 1 or x.dtype not in _PACKED_DTYPES
                or torch.compiler.is_compiling()):
            return super().forward(x, out, activation, multiply)
        y = self._packed(x.dtype)(x.reshape(-1, x.shape[-1]))
        if activation is not None:  # applied after IPEX's product, in place
            y = ACTIVATIONS[activation](y)
        if multiply is not None:  # Linear's multiply (a gate), after IPEX's product, in place
            y = y.mul_(multiply.reshape(y.shape))
        if out is not None:
            return out.copy_(y)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _packed(self, dtype: torch.dtype) -> nn.Module:
        """The prepacked linear for activations of ``dtype``, packed again when the weights changed."""
        cache = self.__dict__.setdefault("_ipex_packed", {})
        # The very tensors and their in-place versions (load_params assigns new tensors, whose memory
        # may be where the old ones were); a change through ``.data`` bypasses the version and is not seen.
        key = [(p, p._version) for p in (self.weights, self.bias) if p is not None]
        hit = cache.get(dtype)
        if hit is not None and len(hit[0]) == len(key) and all(
                a is b and u == v for (a, u), (b, v) in zip(hit[0], key)):
            return hit[1]
        ipex = import_ipex()
        linear = nn.Linear(self.in_shape[0], self.out_shape[0], bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weights.t())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        holder = nn.Module()  # ipex.optimize prepacks a module's children, not the module it is given
        holder.linear = linear.requires_grad_(False)
        # auto_kernel_selection: oneDNN's packed linear for fp32 too (IPEX's default there is MKL's packed
        # sgemm, slower at the trunk's shapes: docs/benchmarks.md); no folding, there are no batch norms.
        holder = ipex.optimize(holder.eval(), dtype=dtype, inplace=True, auto_kernel_selection=True,
                               conv_bn_folding=False, linear_bn_folding=False)
        cache[dtype] = (key, holder.linear)
        return holder.linear


def set_ipex(model: nn.Module, on: bool) -> nn.Module:
    """``model`` with every plain :class:`Linear` run through IPEX (``on``) or back to PyTorch's own GEMMs;
    in place, returns ``model``. Packed weights are kept for a later switch back (bench takes turns)."""
    if on:
        import_ipex()
    for module in model.modules():
        if type(module) is (Linear if on else IpexLinear):
            module.__class__ = IpexLinear if on else Linear
    return model
