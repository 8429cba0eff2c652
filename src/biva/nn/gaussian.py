"""Diagonal Gaussian latents: parameterization, sampling, log-densities.

Standard deviation: ``sigma = min_std + softplus_beta(raw)`` with ``beta = ln 2``, so that
``raw = 0`` gives ``sigma = 1 + min_std``. Unlike the public implementations (softplus on the
log-variance, which forces ``sigma >= 1``), sigma can take any value in ``(min_std, inf)``.
The floor ``min_std`` (default 1e-3) keeps log-densities finite in float32/bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biva.nn.blocks import elu_flatten
from biva.nn.weightnorm import WNConv2d, WNLinear

LOG_2PI = math.log(2 * math.pi)
_LN2 = math.log(2.0)


def std_from_raw(raw: Tensor, min_std: float) -> Tensor:
    """Map an unconstrained tensor to a standard deviation > ``min_std`` (1 + min_std at 0)."""
    return min_std + F.softplus(raw, beta=_LN2)


@dataclass
class DiagonalGaussian:
    """N(mu, diag(sigma^2)) over the non-batch axes; mu, sigma: (B, *event_shape)."""

    mu: Tensor
    sigma: Tensor

    def sample(self, temperature: float = 1.0, noise: Tensor | None = None) -> Tensor:
        """Reparameterized draw ``mu + temperature * sigma * eps`` (B, *event_shape)."""
        eps = torch.randn_like(self.mu) if noise is None else noise
        return self.mu + (temperature * self.sigma) * eps

    def take(self, mode: str = "sample") -> Tensor:
        """A reparameterized draw (``mode="sample"``) or the mean (``"mean"``): (B, *event)."""
        return self.mu if mode == "mean" else self.sample()

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mu, sigma^2) in nats, summed over the event axes -> (B,)."""
        zf, mu, sigma = z.float(), self.mu.float(), self.sigma.float()
        lp = -0.5 * (((zf - mu) / sigma) ** 2 + LOG_2PI) - torch.log(sigma)
        return lp.flatten(1).sum(1)

    def expand(self, n: int) -> DiagonalGaussian:
        """Repeat the batch ``n`` times, sample-major: row ``s * B + b`` is example b."""
        if n == 1:
            return self
        return DiagonalGaussian(repeat_batch(self.mu, n), repeat_batch(self.sigma, n))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) in nats summed over the event axes -> (B,)."""
    zf = z.float()
    return (-0.5 * (zf**2 + LOG_2PI)).flatten(1).sum(1)


def repeat_batch(t: Tensor, n: int) -> Tensor:
    """(B, ...) -> (n*B, ...), sample-major (``t`` repeated n times along the batch)."""
    if n == 1:
        return t
    return t.repeat(n, *([1] * (t.dim() - 1)))


class LatentHead(nn.Module):
    """Features (B, C, H, W) -> one or more diagonal Gaussians over latents of ``sizes``.

    Dense latents (``conv=False``): a weight-normed linear layer on the flattened features,
    each latent of shape (n,). Convolutional latents: a weight-normed conv whose kernel is
    ``kernel`` ("same" padding), each latent of shape (n, H, W). Several latents from one head
    (BIVA's p(z^BU|.) and p(z^TD|.) share all parameters but this last projection's rows).
    """

    def __init__(self, in_ch: int, size: int, sizes: list[int], conv: bool, kernel: int,
                 min_std: float):
        super().__init__()
        self.sizes, self.conv, self.min_std = list(sizes), conv, min_std
        out = 2 * sum(sizes)
        if conv:
            self.proj = WNConv2d(in_ch, out, kernel, padding="same", init_scale=0.1)
        else:
            self.proj = WNLinear(in_ch * size * size, out, init_scale=0.1)

    def forward(self, h: Tensor) -> list[DiagonalGaussian]:
        """Features (B, C, H, W) -> one Gaussian per entry of ``sizes``, each (B, n) dense or
        (B, n, H, W) conv."""
        params = self.proj(F.elu(h)) if self.conv else self.proj(elu_flatten(h))
        dists = []
        for p in params.split([2 * s for s in self.sizes], dim=1):
            mu, raw = p.chunk(2, dim=1)
            dists.append(DiagonalGaussian(mu, std_from_raw(raw, self.min_std)))
        return dists


class LatentEmbedding(nn.Module):
    """Latent sample(s) -> a feature map (B, out_ch, size, size) that enters the next stage.

    Dense: weight-normed linear to out_ch*size*size then reshape; conv: weight-normed conv.
    Several latents (BIVA's z^BU, z^TD) are concatenated first.
    """

    def __init__(self, total: int, out_ch: int, size: int, conv: bool, kernel: int):
        super().__init__()
        self.conv, self.out_ch, self.size = conv, out_ch, size
        if conv:
            self.proj = WNConv2d(total, out_ch, kernel, padding="same")
        else:
            self.proj = WNLinear(total, out_ch * size * size)

    def forward(self, zs: list[Tensor]) -> Tensor:
        """Latent draws (concatenated along dim 1) -> features (B, out_ch, size, size)."""
        z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=1)
        h = self.proj(z)
        return h if self.conv else h.view(-1, self.out_ch, self.size, self.size)
