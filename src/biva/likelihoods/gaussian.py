"""Diagonal Gaussian likelihood for continuous data."""

from __future__ import annotations

from torch import Tensor

from biva.likelihoods.base import Likelihood
from biva.nn.gaussian import DiagonalGaussian, std_from_raw


class Gaussian(Likelihood):
    """N(x; mu, sigma^2) per dimension; decoder emits (mu, raw sigma): (B, 2C, H, W).

    ``fixed_std`` > 0 fixes sigma (an isotropic p(x), as in appendix D) and the decoder then
    emits only mu. The learned sigma has the floor ``min_std``.
    """

    def __init__(self, fixed_std: float = 0.0, min_std: float = 1e-3):
        super().__init__()
        self.fixed_std, self.min_std = fixed_std, min_std

    def param_channels(self, data_channels: int) -> int:
        return data_channels if self.fixed_std > 0 else 2 * data_channels

    def dist(self, params: Tensor) -> DiagonalGaussian:
        """The Gaussian the decoder output stands for."""
        params = params.float()
        if self.fixed_std > 0:
            return DiagonalGaussian(params, params.new_full(params.shape, self.fixed_std))
        mu, raw = params.chunk(2, dim=1)
        return DiagonalGaussian(mu, std_from_raw(raw, self.min_std))

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return self.dist(params).log_prob(x)

    def sample(self, params: Tensor) -> Tensor:
        return self.dist(params).sample()

    def mean(self, params: Tensor) -> Tensor:
        return self.dist(params).mu
