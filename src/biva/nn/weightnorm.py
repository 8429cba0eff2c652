"""Weight-normalized layers (Salimans & Kingma 2016) with an explicit data-dependent init.

The weight is ``w = g * v / ||v||`` with the norm taken over every axis but the output one.
Data-dependent initialization sets ``g`` and the bias so that, on a given batch, every output
unit has mean 0 and standard deviation ``init_scale``. It runs once, when the caller asks for
it (:func:`data_dependent_init`), through forward hooks: ``forward`` itself never branches on
an "initialized" flag, never syncs with the host, and never re-initializes after loading a
checkpoint (the init result is just ``g`` and ``bias``, saved like any parameter).

Speed: convolutions get their weight from the fused ``torch._weight_norm`` kernel (one pass over
``v`` forward and backward); linear layers, whose weights are far larger than a batch of their
outputs (the dense latent heads), scale the output instead of building the weight. Layers with
``float_output = True`` (the latent heads) return float32 under autocast, so latent samples
and their log-densities are never rounded to bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _WeightNormMixin:
    """Shared reparameterization; subclasses define ``_raw(x, weight)`` (the op without bias)."""

    v: nn.Parameter
    g: nn.Parameter
    bias: nn.Parameter
    init_scale: float
    _norm_dims: tuple[int, ...]
    # Cast the output to float32 (a no-op outside autocast); set on the latent heads.
    float_output: bool = False

    def weight(self) -> Tensor:
        """The effective weight ``g * v / ||v||`` (same shape as ``v``)."""
        shape = [1] * self.v.dim()
        shape[self._out_dim] = -1
        # Fused norm-and-scale kernel (CPU and CUDA) for the output axis 0; composite otherwise.
        return torch._weight_norm(self.v, self.g.view(shape), self._out_dim)

    def _out(self, y: Tensor) -> Tensor:
        return y.float() if self.float_output else y

    @property
    def _out_dim(self) -> int:
        return 0


class WNLinear(_WeightNormMixin, nn.Module):
    """Weight-normalized ``nn.Linear``: (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0):
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * 0.05)
        self.g = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.init_scale = init_scale
        self._norm_dims = (1,)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_features) -> (B, out_features) with the weight g v / ||v||."""
        # x @ (g v/||v||)^T + b == (x @ v^T) * (g/||v||) + b: the scale touches B x out values
        # instead of the out x in weight, forward and backward.
        scale = self.g / torch.linalg.vector_norm(self.v, dim=1)
        y = F.linear(x, self.v)
        if self.float_output or y.dtype == scale.dtype:
            return self._out(torch.addcmul(self.bias, y, scale))
        # Under autocast: stay in y's dtype (bf16), or the float32 output would promote the
        # whole residual stream it feeds to float32. Rounding the scale to bf16 is rounding
        # the weight, as autocast does for every other layer.
        return torch.addcmul(self.bias.to(y.dtype), y, scale.to(y.dtype))


class WNConv2d(_WeightNormMixin, nn.Module):
    """Weight-normalized ``nn.Conv2d``; ``padding`` may be an int or ``"same"`` (stride 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 padding: int | str | None = None, init_scale: float = 1.0):
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel) * 0.05)
        self.g = nn.Parameter(torch.ones(out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.stride = stride
        self.padding = kernel // 2 if padding is None else padding
        self._pad = None
        if self.padding == "same" and kernel % 2 == 0:
            # torch pads an even kernel's "same" asymmetrically (one more on the right and
            # bottom) through a warned-about copy; the same explicit padding, without it.
            left = (kernel - 1) // 2
            self._pad, self.padding = (left, kernel - 1 - left) * 2, 0
        self.init_scale = init_scale
        self._norm_dims = (1, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)."""
        if self._pad is not None:
            x = F.pad(x, self._pad)
        return self._out(F.conv2d(x, self.weight(), self.bias, stride=self.stride,
                                  padding=self.padding))


class WNConvTranspose2d(_WeightNormMixin, nn.Module):
    """Weight-normalized ``nn.ConvTranspose2d`` that multiplies the spatial size by ``stride``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, init_scale: float = 1.0):
        super().__init__()
        # ConvTranspose weights are (in, out, k, k): the output axis is 1.
        self.v = nn.Parameter(torch.randn(in_ch, out_ch, kernel, kernel) * 0.05)
        self.g = nn.Parameter(torch.ones(out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.stride = stride
        self.padding = kernel // 2
        # With an odd kernel and padding k//2 the output is (n-1)*s + 1 + output_padding = n*s.
        self.output_padding = stride - 1
        self.init_scale = init_scale
        self._norm_dims = (0, 2, 3)

    @property
    def _out_dim(self) -> int:
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H * stride, W * stride)."""
        return self._out(F.conv_transpose2d(x, self.weight(), self.bias, stride=self.stride,
                                            padding=self.padding,
                                            output_padding=self.output_padding))


WN_LAYERS = (WNLinear, WNConv2d, WNConvTranspose2d)


def _init_hook(module: nn.Module, _inputs, output: Tensor) -> Tensor:
    # Called with g = 1 and bias = 0, so `output` is the normalized pre-activation t.
    reduce_dims = [d for d in range(output.dim()) if d != 1] if output.dim() > 2 else [0]
    mean = output.mean(dim=reduce_dims)
    std = output.std(dim=reduce_dims, unbiased=False).clamp_min(1e-6)
    scale = module.init_scale / std
    with torch.no_grad():
        module.g.copy_(scale)
        module.bias.copy_(-mean * scale)
    shape = [1] * output.dim()
    shape[1 if output.dim() > 2 else -1] = -1
    return (output - mean.view(shape)) * scale.view(shape)


@contextmanager
def _hooks_on(model: nn.Module, hook: Callable):
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, WN_LAYERS)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def data_dependent_init(model: nn.Module, run: Callable[[], object]) -> None:
    """Initialize every weight-normed layer of ``model`` from the data seen by ``run()``.

    ``run`` performs one forward pass (e.g. ``lambda: model(x)``) on a representative batch;
    layers are initialized in the order the pass reaches them, each seeing the already
    initialized layers before it. Runs in eval mode (no dropout), restores the previous mode.
    """
    was_training = model.training
    model.eval()
    for m in model.modules():
        if isinstance(m, WN_LAYERS):
            m.g.fill_(1.0)
            m.bias.zero_()
    try:
        with _hooks_on(model, _init_hook):
            run()
    finally:
        model.train(was_training)
