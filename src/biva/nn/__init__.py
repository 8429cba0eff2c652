"""Building blocks: weight-normed layers, gated residual blocks, Gaussian latents."""

from .blocks import GatedResBlock, Stage, resampling_conv
from .gaussian import DiagonalGaussian, LatentEmbedding, LatentHead, std_from_raw
from .weightnorm import WNConv2d, WNConvTranspose2d, WNLinear, data_dependent_init

__all__ = ["GatedResBlock", "Stage", "resampling_conv", "DiagonalGaussian", "LatentEmbedding",
           "LatentHead", "std_from_raw", "WNConv2d", "WNConvTranspose2d", "WNLinear",
           "data_dependent_init"]
