"""Residual blocks of the top-down hierarchies: VDVAE's bottleneck block, NVAE's cells.

Shapes: every block maps (B, C_in, H, W) -> (B, C_out, H, W); none changes the resolution
(the hierarchies pool and unpool between blocks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SameConv2d(nn.Conv2d):
    """A "same"-padded convolution (odd kernel, stride 1) that crops its kernel on inputs
    smaller than it: on an H x W input, taps more than H - 1 (W - 1) pixels from the centre
    only ever meet the zero padding, so the centred (2H - 1) x (2W - 1) window gives the same
    output. Why: oneDNN's depthwise 5x5 kernel on 1x1 inputs (NVAE's top cells) is about 4x
    slower than the whole rest of the pass; cropped it is an elementwise scale. Same
    parameters as ``nn.Conv2d`` (checkpoints load unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        ch, cw = min(kh, 2 * x.shape[-2] - 1), min(kw, 2 * x.shape[-1] - 1)
        if (ch, cw) == (kh, kw):
            return super().forward(x)
        dh, dw = (kh - ch) // 2, (kw - cw) // 2
        weight = self.weight[:, :, dh:dh + ch, dw:dw + cw]
        return F.conv2d(x, weight, self.bias, 1, (ch // 2, cw // 2), 1, self.groups)


def conv(in_ch: int, out_ch: int, kernel: int, groups: int = 1) -> nn.Conv2d:
    """A "same"-padded convolution: (B, in_ch, H, W) -> (B, out_ch, H, W)."""
    if kernel % 2 == 0:
        raise ValueError(f"a same-padded convolution needs an odd kernel, got {kernel}")
    return SameConv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups)


class BottleneckBlock(nn.Module):
    """VDVAE's block: GELU-1x1-GELU-3x3-GELU-3x3-GELU-1x1 through ``mid`` channels.

    At resolutions <= 2 the 3x3 convolutions are 1x1 (as in VDVAE). ``residual`` adds the input
    (in_ch == out_ch). ``out_scale`` multiplies the last conv's initial weights (VDVAE scales
    the residual outputs by sqrt(1 / N_blocks)); ``zero_last`` starts it at zero (the prior
    blocks, so every prior starts as N(0, I) plus the state's contribution).
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, resolution: int, *,
                 residual: bool = False, out_scale: float = 1.0, zero_last: bool = False):
        super().__init__()
        if residual and in_ch != out_ch:
            raise ValueError(f"a residual block needs in_ch == out_ch, got {in_ch}, {out_ch}")
        k = 3 if resolution > 2 else 1
        self.residual = residual
        self.c1, self.c2 = conv(in_ch, mid, 1), conv(mid, mid, k)
        self.c3, self.c4 = conv(mid, mid, k), conv(mid, out_ch, 1)
        with torch.no_grad():
            if zero_last:
                self.c4.weight.zero_()
                self.c4.bias.zero_()
            else:
                self.c4.weight.mul_(out_scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        return x + h if self.residual else h


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(FC(ReLU(FC(mean_hw x)))), reduction 16 (at least 4 units)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class NVAEEncoderCell(nn.Module):
    """NVAE's encoder cell: BN-Swish-conv3x3-BN-Swish-conv3x3-SE, returned as x + 0.1 * s."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.SiLU(), conv(channels, channels, 3),
            nn.BatchNorm2d(channels), nn.SiLU(), conv(channels, channels, 3),
            SqueezeExcite(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * self.body(x)


class NVAEDecoderCell(nn.Module):
    """NVAE's generative cell: BN-1x1 (expand) -BN-Swish- depthwise 5x5 -BN-Swish-1x1-BN-SE,
    returned as x + 0.1 * s. ``expanded`` channels inside (NVAE: 6x the input)."""

    def __init__(self, channels: int, expanded: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), conv(channels, expanded, 1),
            nn.BatchNorm2d(expanded), nn.SiLU(), conv(expanded, expanded, 5, groups=expanded),
            nn.BatchNorm2d(expanded), nn.SiLU(), conv(expanded, channels, 1),
            nn.BatchNorm2d(channels), SqueezeExcite(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * self.body(x)


class SpectralPenalty(nn.Module):
    """sum over ``convs`` of their largest singular value, by one power iteration a call.

    Each conv weight (out, in, k, k) is read as an (out, in*k*k) matrix (for a depthwise conv a
    per-channel proxy of its operator norm, as in NVAE's regularizer). The singular vectors
    are buffers, refined by one step per call in training mode; the estimate ``u^T W v`` is
    differentiable in W (the vectors are constants), so ``lambda * penalty()`` can join a loss.
    """

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = convs          # plain list: the owner registers the modules
        gen = torch.Generator().manual_seed(0)
        for i, c in enumerate(convs):
            w = c.weight.detach().flatten(1)
            self.register_buffer(f"u{i}", F.normalize(torch.randn(w.shape[0], generator=gen),
                                                      dim=0))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(w.shape[1], generator=gen),
                                                      dim=0))

    def forward(self) -> Tensor:
        total = self.convs[0].weight.new_zeros(())
        for i, c in enumerate(self.convs):
            w = c.weight.flatten(1)
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            if self.training:
                with torch.no_grad():
                    v.copy_(F.normalize(w.t().float() @ u, dim=0, eps=1e-12))
                    u.copy_(F.normalize(w.float() @ v, dim=0, eps=1e-12))
            total = total + u @ (w.float() @ v)
        return total


def residual_scale(n_blocks: int) -> float:
    """VDVAE's initial scale of the residual outputs: sqrt(1 / N_blocks)."""
    return math.sqrt(1.0 / max(n_blocks, 1))
