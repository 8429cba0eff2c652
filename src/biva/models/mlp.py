"""Run a hierarchy over 1x1 feature maps as the residual MLP it is (dense layers, no convs).

With ``input_shape = (C, 1, 1)``, kernels 1 and dense latents, :class:`HierarchicalVAE` is a
stack of gated residual MLP blocks; :func:`as_mlp` swaps its convolutions for dense layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biva.models.hierarchy import HierarchicalVAE
from biva.nn.weightnorm import WNConv2d, WNLinear


class PixelLinear(WNLinear):
    """A weight-normed conv on 1x1 maps run as a dense layer: (B, C, 1, 1) -> (B, O, 1, 1).

    On a 1x1 map with "same" padding only a kernel's centre tap meets data, so the layer keeps
    that tap; the others would only enter the weight norm. ``F.linear`` runs ~1.6x faster than
    oneDNN's convolution on such maps (CPU, batch 512, 128 channels).
    """

    @classmethod
    def from_conv(cls, conv: WNConv2d) -> PixelLinear:
        """The linear layer computing what ``conv`` computes on a 1x1 map (its centre tap)."""
        out_ch, in_ch, k, _ = conv.v.shape
        layer = cls(in_ch, out_ch, init_scale=conv.init_scale)
        with torch.no_grad():
            layer.v.copy_(conv.v[:, :, k // 2, k // 2])
            layer.g.copy_(conv.g)
            layer.bias.copy_(conv.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, 1, 1) -> (B, out, 1, 1): the 1x1 map's conv as a linear layer."""
        return super().forward(x.flatten(1))[:, :, None, None]


def as_mlp(model: HierarchicalVAE) -> HierarchicalVAE:
    """Replace, in place, every conv of a hierarchy whose feature maps are all 1x1 by a
    :class:`PixelLinear` (before :meth:`~HierarchicalVAE.initialize`); returns the model."""
    if any(r != 1 for r in model.config.spatial_sizes()):
        raise ValueError("as_mlp needs a hierarchy of 1x1 feature maps (input_shape (C, 1, 1))")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WNConv2d):
                if child.stride != 1:
                    raise ValueError(f"as_mlp: strided conv {name!r} on a 1x1 map")
                setattr(parent, name, PixelLinear.from_conv(child))
    return model
