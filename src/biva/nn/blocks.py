"""Gated residual blocks (PixelCNN++ style) and the convolutions that change resolution.

Every deterministic layer of the hierarchy is a :class:`GatedResBlock`: eq. (5) and (8) of the
paper, ``d_{i,j} = <f_{i,j}(d_{i,j-1}); d_{i+1,j}>``, are blocks with an auxiliary input. A
convolution over a concatenation ``<h; a>`` equals the sum of a convolution over ``h`` and one
over ``a``; the block computes it that way so ``a`` may live at another resolution (it is
resampled to the block's input size first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weightnorm import WNConv2d, WNConvTranspose2d


def resampling_conv(in_ch: int, out_ch: int, in_size: int, out_size: int, kernel: int,
                    init_scale: float = 1.0) -> nn.Module:
    """A weight-normed conv mapping (B, in_ch, in_size, in_size) -> (B, out_ch, out_size, out_size).

    Same size: stride-1 conv; smaller: strided conv; larger: transposed conv. Sizes must divide.
    """
    if in_size == out_size:
        return WNConv2d(in_ch, out_ch, kernel, init_scale=init_scale)
    if in_size > out_size:
        if in_size % out_size:
            raise ValueError(f"cannot downsample {in_size} to {out_size}: not a divisor")
        return WNConv2d(in_ch, out_ch, kernel, stride=in_size // out_size, init_scale=init_scale)
    if out_size % in_size:
        raise ValueError(f"cannot upsample {in_size} to {out_size}: not a multiple")
    return WNConvTranspose2d(in_ch, out_ch, kernel, stride=out_size // in_size,
                             init_scale=init_scale)


class GatedResBlock(nn.Module):
    """``y = res(x) + a * sigmoid(b)``, ``(a, b) = conv2(drop(act(conv1(act(x)) + aux(act(c)))))``.

    x: (B, in_ch, in_size, in_size) -> y: (B, out_ch, out_size, out_size). ``conv1`` keeps the
    input resolution, ``conv2`` changes it (stride or transposed stride). The optional auxiliary
    input c: (B, aux_ch, aux_size, aux_size) is the skip connection of eq. (5)/(8). When the
    channel count or size changes, the residual goes through a 1x1 (or 3x3 strided) weight-normed
    conv rather than being zero-padded or dropped, so information is never discarded.
    """

    def __init__(self, in_ch: int, out_ch: int, in_size: int, out_size: int, kernel: int = 3,
                 aux_ch: int = 0, aux_size: int | None = None, dropout: float = 0.0,
                 out_scale: float = 0.1):
        super().__init__()
        self.act = nn.ELU()
        self.conv1 = WNConv2d(in_ch, out_ch, kernel)
        self.aux = None
        if aux_ch:
            aux_size = in_size if aux_size is None else aux_size
            self.aux = resampling_conv(aux_ch, out_ch, aux_size, in_size,
                                       1 if aux_size == in_size else 3)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # A small init scale on the gated output starts every block close to the identity,
        # which keeps the activations of a deep stack at unit scale after the data init.
        self.conv2 = resampling_conv(out_ch, 2 * out_ch, in_size, out_size, kernel,
                                     init_scale=out_scale)
        self.skip = None
        if in_ch != out_ch or in_size != out_size:
            self.skip = resampling_conv(in_ch, out_ch, in_size, out_size,
                                        1 if in_size == out_size else 3)

    def forward(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        h = self.conv1(self.act(x))
        if self.aux is not None:
            if aux is None:
                raise ValueError("this block was built with an auxiliary input; none was given")
            h = h + self.aux(self.act(aux))
        h = self.conv2(self.dropout(self.act(h)))
        a, b = h.chunk(2, dim=1)
        res = x if self.skip is None else self.skip(x)
        return res + a * torch.sigmoid(b)


class Stage(nn.Module):
    """M gated blocks; block 1 changes resolution/channels, block j takes skip input j.

    ``forward(h, skips)`` returns the list [d_1, ..., d_M] of block outputs (eq. 5/8); ``skips``
    is the list of the neighbouring stage's block outputs, or None for a stage without skips.
    """

    def __init__(self, in_ch: int, out_ch: int, in_size: int, out_size: int, n_blocks: int,
                 kernel: int, dropout: float, skip_ch: int = 0, skip_size: int | None = None):
        super().__init__()
        blocks = []
        for j in range(n_blocks):
            blocks.append(GatedResBlock(
                in_ch if j == 0 else out_ch, out_ch, in_size if j == 0 else out_size, out_size,
                kernel=kernel, aux_ch=skip_ch, aux_size=skip_size, dropout=dropout))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: Tensor, skips: list[Tensor] | None = None) -> list[Tensor]:
        outs = []
        for j, block in enumerate(self.blocks):
            h = block(h, None if skips is None else skips[j])
            outs.append(h)
        return outs


def elu_flatten(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C*H*W) after the block activation (input to a dense latent head)."""
    return F.elu(x).flatten(1)
