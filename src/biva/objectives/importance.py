"""Importance-weighted bounds L_K (Burda et al. 2016) and L^{>k}_K, vectorized and chunked."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def importance_weighted_bound(model: nn.Module, x: Tensor, n_samples: int, *,
                              prior_layers: int = 0, max_batch: int = 4096) -> Tensor:
    """L_K = log (1/K) sum_k w_k per example, in nats: (B,) float64.

    ``model(x, n_samples=c, prior_layers=k).log_weight`` must give c*B log-weights
    (sample-major). The K samples are drawn in chunks of at most ``max_batch`` rows (a bound on
    memory), each a single batched pass; the running log-sum-exp is accumulated in float64.
    ``prior_layers = k`` gives L^{>k}_K. Runs in eval mode without autograd.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    b = x.shape[0]
    chunk = max(1, min(n_samples, max_batch // max(b, 1)))
    was_training = model.training
    model.eval()
    try:
        total = None
        for start in range(0, n_samples, chunk):
            c = min(chunk, n_samples - start)
            lw = model(x, n_samples=c, prior_layers=prior_layers).log_weight
            lse = torch.logsumexp(lw.double().view(c, b), dim=0)
            total = lse if total is None else torch.logaddexp(total, lse)
    finally:
        model.train(was_training)
    return total - math.log(n_samples)


@torch.no_grad()
def log_weights(model: nn.Module, x: Tensor, n_samples: int, *, prior_layers: int = 0,
                max_batch: int = 4096) -> Tensor:
    """All K log importance weights, (K, B) float64 (for effective sample size and spread)."""
    b = x.shape[0]
    chunk = max(1, min(n_samples, max_batch // max(b, 1)))
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, n_samples, chunk):
            c = min(chunk, n_samples - start)
            lw = model(x, n_samples=c, prior_layers=prior_layers).log_weight
            parts.append(lw.double().view(c, b))
    finally:
        model.train(was_training)
    return torch.cat(parts, 0)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = (sum w)^2 / sum w^2 per example from log-weights (K, B): (B,) in [1, K]."""
    log_w = log_w.double()
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
