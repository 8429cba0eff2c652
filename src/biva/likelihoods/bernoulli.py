"""Bernoulli likelihood for binary images, x in {0, 1}."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from biva.likelihoods.base import Likelihood


class Bernoulli(Likelihood):
    """Independent Bernoulli per pixel; the decoder emits logits (B, C, H, W)."""

    def param_channels(self, data_channels: int) -> int:
        return data_channels

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        nll = F.binary_cross_entropy_with_logits(params.float(), x.float(), reduction="none")
        return -nll.flatten(1).sum(1)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params.float()))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.float())
