"""Exponential moving average of a model's parameters, used for evaluation and sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` after every update; buffers are copied.

    Create it only after the data-dependent init, so the average starts from the initialized
    weights (the public port copied the model before its init, a known fault).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live parameters in (one fused op over all tensors, no host sync)."""
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)
        for b_dst, b_src in zip(self.model.buffers(), model.buffers(), strict=True):
            b_dst.copy_(b_src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged weights."""
        self.model.load_state_dict(state)
