"""Categorical likelihood for tokens or quantized values."""

from __future__ import annotations

import torch
from torch import Tensor

from biva.likelihoods.base import Likelihood


class Categorical(Likelihood):
    """A softmax over ``num_classes`` per position.

    Params (B, num_classes * C, *spatial) for x (B, C, *spatial) of integer classes (any dtype
    holding integers); a token sequence is x (B, 1, T) with params (B, K, T). Positions where
    x equals ``ignore_index`` (e.g. padding) contribute 0.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def param_channels(self, data_channels: int) -> int:
        return self.num_classes * data_channels

    def _logits(self, params: Tensor) -> Tensor:
        """(B, K*C, *spatial) -> log-probabilities (B, K, C, *spatial)."""
        b, k = params.shape[0], self.num_classes
        logits = params.float().view(b, k, params.shape[1] // k, *params.shape[2:])
        return torch.log_softmax(logits, dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logp = self._logits(params)
        idx = x.long()
        mask = None
        if self.ignore_index is not None:
            mask = idx != self.ignore_index
            idx = idx.masked_fill(~mask, 0)
        lp = logp.gather(1, idx.unsqueeze(1)).squeeze(1)
        if mask is not None:
            lp = lp * mask
        return lp.flatten(1).sum(1)

    def sample(self, params: Tensor) -> Tensor:
        logits = self._logits(params).movedim(1, -1)
        flat = torch.multinomial(logits.exp().reshape(-1, self.num_classes), 1)
        return flat.view(logits.shape[:-1]).to(torch.float32)

    def mean(self, params: Tensor) -> Tensor:
        return self._logits(params).argmax(1).to(torch.float32)
