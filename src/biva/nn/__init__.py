"""Building blocks: weight-normed layers with data-dependent init, gated residual blocks and
stages (the BIVA family), the residual cells of the VDVAE- and NVAE-style models (bottleneck
blocks; depthwise-separable cells with batch norm, Swish and squeeze-and-excitation; spectral
regularization), and diagonal Gaussian latents."""

from biva.nn.blocks import GatedResBlock, Stage, resampling_conv
from biva.nn.gaussian import DiagonalGaussian, LatentEmbedding, LatentHead, std_from_raw
from biva.nn.weightnorm import WNConv2d, WNConvTranspose2d, WNLinear, data_dependent_init

__all__ = ["GatedResBlock", "Stage", "resampling_conv", "DiagonalGaussian", "LatentEmbedding",
           "LatentHead", "std_from_raw", "WNConv2d", "WNConvTranspose2d", "WNLinear",
           "data_dependent_init"]
