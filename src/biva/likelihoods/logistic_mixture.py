"""Discretized logistic mixture likelihood (Salimans et al. 2017, PixelCNN++).

Data x in [-1, 1] on ``2**bits`` evenly spaced levels (see ``biva.data.to_model_input``).
Per pixel, a mixture of ``n_mix`` logistics shared across channels; channel c's mean is
``mu_c + sum_{c' < c} coeff_{c,c'} x_{c'}`` (for RGB: the PixelCNN++ R -> G -> B coefficients,
squashed by tanh). Each value's probability is the logistic mass of its bin; the outermost
bins extend to -inf / +inf, so the probabilities of all 2**bits levels sum to exactly 1.

Decoder layout (B, n_mix * (1 + 2C + C(C-1)/2), H, W): mixture logits, means (n_mix*C),
log-scales (n_mix*C, clamped below at ``min_log_scale``), coefficients (n_mix*C(C-1)/2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from biva.likelihoods.base import Likelihood


class DiscretizedLogisticMixture(Likelihood):
    """PixelCNN++ likelihood with any number of components and any bit depth <= 16."""

    def __init__(self, n_mix: int = 10, bits: int = 8, min_log_scale: float = -7.0):
        super().__init__()
        if n_mix < 1:
            raise ValueError(f"n_mix must be >= 1, got {n_mix}")
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        self.n_mix, self.bits, self.min_log_scale = n_mix, bits, min_log_scale
        self.half_bin = 1.0 / (2**bits - 1)  # levels are 2 * half_bin apart

    def param_channels(self, data_channels: int) -> int:
        c = data_channels
        return self.n_mix * (1 + 2 * c + c * (c - 1) // 2)

    def _split(self, params: Tensor, c: int):
        b, _, h, w = params.shape
        k = self.n_mix
        n_coef = c * (c - 1) // 2
        logits, means, log_scales, coeffs = params.float().split([k, k * c, k * c, k * n_coef], 1)
        means = means.view(b, k, c, h, w)
        log_scales = log_scales.view(b, k, c, h, w).clamp_min(self.min_log_scale)
        coeffs = torch.tanh(coeffs.view(b, k, n_coef, h, w))
        return logits, means, log_scales, coeffs

    @staticmethod
    def _conditioned_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
        """Add the channel-autoregressive terms: means (B,K,C,H,W), x (B,C,H,W)."""
        c = means.shape[2]
        if c == 1:
            return means
        out, idx = [means[:, :, 0]], 0
        for ch in range(1, c):
            m = means[:, :, ch]
            for prev in range(ch):
                m = m + coeffs[:, :, idx] * x[:, prev].unsqueeze(1)
                idx += 1
            out.append(m)
        return torch.stack(out, dim=2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = x.float()
        c = x.shape[1]
        logits, means, log_scales, coeffs = self._split(params, c)
        means = self._conditioned_means(means, coeffs, x)
        xk = x.unsqueeze(1)  # (B, 1, C, H, W)
        centered = xk - means
        inv_s = torch.exp(-log_scales)
        plus_in = inv_s * (centered + self.half_bin)
        min_in = inv_s * (centered - self.half_bin)
        log_cdf_plus = F.logsigmoid(plus_in)              # left edge: mass of (-inf, x + h]
        log_one_minus_cdf_min = F.logsigmoid(-min_in)     # right edge: mass of [x - h, inf)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_s * centered
        # Where the bin mass underflows in float32, use density * bin width at the centre.
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)),
                              log_pdf_mid + math.log(2 * self.half_bin))
        lp = torch.where(xk < -1 + self.half_bin, log_cdf_plus,
                         torch.where(xk > 1 - self.half_bin, log_one_minus_cdf_min, log_mid))
        lp = lp.sum(2) + torch.log_softmax(logits, dim=1)  # (B, K, H, W)
        return torch.logsumexp(lp, dim=1).flatten(1).sum(1)

    def _pick(self, logits: Tensor, greedy: bool) -> Tensor:
        if greedy:
            return logits.argmax(1, keepdim=True)
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)))
        return (logits + gumbel).argmax(1, keepdim=True)  # (B, 1, H, W)

    def _draw(self, params: Tensor, c: int, greedy: bool) -> Tensor:
        logits, means, log_scales, coeffs = self._split(params, c)
        k = self._pick(logits, greedy)
        sel = k.unsqueeze(2).expand(-1, 1, c, -1, -1)
        mu = means.gather(1, sel).squeeze(1)            # (B, C, H, W)
        ls = log_scales.gather(1, sel).squeeze(1)
        cf = coeffs.gather(1, k.unsqueeze(2).expand(-1, 1, coeffs.shape[2], -1, -1)).squeeze(1)
        if greedy:
            noise = torch.zeros_like(mu)
        else:
            u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
            noise = torch.exp(ls) * (torch.log(u) - torch.log1p(-u))
        xs, idx = [], 0
        for ch in range(c):
            m = mu[:, ch]
            for prev in range(ch):
                m = m + cf[:, idx] * xs[prev]
                idx += 1
            xs.append(self.quantize((m + noise[:, ch]).clamp(-1, 1)))
        return torch.stack(xs, 1)

    def quantize(self, x: Tensor) -> Tensor:
        """Snap values in [-1, 1] to the nearest of the 2**bits levels."""
        levels = 2**self.bits - 1
        return torch.round((x + 1) / 2 * levels) / levels * 2 - 1

    def sample(self, params: Tensor) -> Tensor:
        return self._draw(params, self._channels(params), greedy=False)

    def mean(self, params: Tensor) -> Tensor:
        return self._draw(params, self._channels(params), greedy=True)

    def _channels(self, params: Tensor) -> int:
        """The data channel count C that params (B, n_mix * (C + 1)(C + 2) / 2, H, W) stand for."""
        per = params.shape[1] // self.n_mix
        c = (math.isqrt(8 * per + 1) - 3) // 2  # per component: 1 + 2C + C(C-1)/2 = (C+1)(C+2)/2
        if c < 1 or self.param_channels(c) != params.shape[1]:
            raise ValueError(f"{params.shape[1]} parameter channels fit no channel count for "
                             f"{self.n_mix} mixture components (expected n_mix * (C + 1)(C + 2)"
                             f" / 2 for C >= 1: {self.param_channels(1)}, "
                             f"{self.param_channels(2)}, {self.param_channels(3)}, ...)")
        return c
