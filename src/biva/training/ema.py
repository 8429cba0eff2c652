"""Exponential moving average of a model's parameters, used for evaluation and sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = d * ema + (1 - d) * param`` after every update; buffers are copied.

    ``d = decay``, or with ``warmup`` ``d = min(decay, (1 + n) / (10 + n))`` after n updates:
    without it a decay of 0.9995 keeps ~95% of the *initial* weights after 100 steps, so early
    validation (and best-checkpoint selection) would judge an untrained model. Create the EMA
    only after the data-dependent init, so the average starts from the initialized weights
    (the public port copied the model before its init, a known fault).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live parameters in (one fused op over all tensors, no host sync)."""
        decay = self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(self._dst, self._src, 1.0 - decay)
        for b_dst, b_src in zip(self.model.buffers(), model.buffers(), strict=True):
            b_dst.copy_(b_src)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged weights."""
        self.model.load_state_dict(state)
