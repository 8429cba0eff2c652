"""Unit conversions between nats and bits per dimension."""

from __future__ import annotations

import math

from torch import Tensor


def bits_per_dim(log_likelihood_nats: Tensor | float, n_dims: int) -> Tensor | float:
    """-L / (h w c ln 2): a bound in nats (per example) -> bits/dim (lower is better)."""
    return -log_likelihood_nats / (n_dims * math.log(2.0))


def nats_from_bits_per_dim(bpd: Tensor | float, n_dims: int) -> Tensor | float:
    """Inverse of :func:`bits_per_dim`: bits/dim -> log-likelihood bound in nats."""
    return -bpd * n_dims * math.log(2.0)
