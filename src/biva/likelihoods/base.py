"""The interface every observation model implements."""

from __future__ import annotations

from torch import Tensor, nn


class Likelihood(nn.Module):
    """p(x | decoder output). The decoder emits ``param_channels(C)`` channels per pixel.

    ``log_prob`` always computes in float32 (even under bf16 autocast) and returns nats per
    example (B,), summed over every data dimension.
    """

    def param_channels(self, data_channels: int) -> int:
        """Channels the decoder's last layer must produce for data with ``data_channels``."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) in nats, (B,). ``x`` is in model-input space (see biva.data)."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """A draw from p(x | params), in model-input space, shape of x."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """A deterministic summary (mean) for display, in model-input space."""
        raise NotImplementedError
