"""Bounds averaged over a data split: the ELBO (L_1) with its terms and per-group KL, L_K and
L^{>k}_K, in nats per example and bits/dim. Used by training (validation) and evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from biva.data import ImageSplit, to_model_input
from biva.objectives.importance import importance_weighted_bound
from biva.objectives.units import bits_per_dim
from biva.utils.deprecation import warn_renamed
from biva.utils.rng import seeded_eval


def split_batches(split: ImageSplit, kind: str, bits: int, batch_size: int, device=None,
                  limit: int | None = None) -> Iterator[Tensor]:
    """The first ``limit`` images of ``split`` (all of them when ``limit`` is None or 0) as
    model-input batches (B, C, H, W) of at most ``batch_size``, in order, on ``device``."""
    n = len(split) if not limit else min(limit, len(split))
    for start in range(0, n, batch_size):
        images = split.images[start:min(start + batch_size, n)]
        yield to_model_input(images, kind, bits).to(device)


@torch.no_grad()
def validation_elbo(model: nn.Module, split: ImageSplit, kind: str, bits: int, *,
                    batch_size: int = 100, device=None, max_batches: int | None = None) -> float:
    """Mean ELBO (L_1, one sample) in nats per example over ``split`` (eval mode)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    total, count = 0.0, 0
    limit = None if max_batches is None else max_batches * batch_size
    try:
        for x in split_batches(split, kind, bits, batch_size, device, limit):
            total += float(model(x).elbo.double().sum())
            count += x.shape[0]
    finally:
        model.train(was)
    return total / max(count, 1)


def evaluate_bounds(model: nn.Module, split: ImageSplit, kind: str, bits: int, *,
                    n_samples: int = 1000, batch_size: int = 100, max_batch: int = 4096,
                    n_examples: int = 0, prior_layers: int = 0, device=None,
                    progress=None, seed: int | None = 0, k: int | None = None) -> dict:
    """L_1 (with per-group KL) and L_K over a split: nats per example and bits/dim.

    ``n_samples``: importance samples K (1: L_1 only); ``prior_layers``: the k of L^{>k}_K.
    Returns a JSON-ready dict; ``per_example`` holds the (N,) L_1 and L_K values in nats; the
    key ``k`` of the result holds K (result files keep that key). ``seed`` fixes the latent
    draws (the same checkpoint gives the same numbers; None: the global RNG as it is).
    ``k``: the old name of ``n_samples`` (deprecated).
    """
    if k is not None:
        warn_renamed("evaluate_bounds(k=...)", "n_samples=...")
        n_samples = k
    k = n_samples
    device = device or next(model.parameters()).device
    l1, lk, kl = [], [], []
    limit = n_examples or None
    with seeded_eval(model, seed):
        for x in split_batches(split, kind, bits, batch_size, device, limit):
            out = model(x, prior_layers=prior_layers)
            l1.append(out.elbo.double().cpu())
            kl.append(out.kl_per_group.double().cpu())
            if k > 1:
                # Progress by chunk of samples: a batch of 100 images at K = 1000 is minutes.
                step = (lambda c, b=x.shape[0]: progress(b * c / k)) if progress else None
                lk.append(importance_weighted_bound(model, x, k, prior_layers=prior_layers,
                                                    max_batch=max_batch, on_chunk=step).cpu())
            elif progress is not None:
                progress(x.shape[0])
    l1_t = torch.cat(l1)
    dims = math.prod(split.images.shape[1:])
    res = {"n_examples": int(l1_t.numel()), "dims": dims, "prior_layers": prior_layers,
           "seed": seed,
           "L_1": float(l1_t.mean()), "L_1_bpd": float(bits_per_dim(l1_t.mean(), dims)),
           "kl_per_group": dict(zip(getattr(model, "group_names", []),
                                    torch.cat(kl).mean(0).tolist(), strict=False)),
           "per_example": {"L_1": l1_t.tolist()}}
    if lk:
        lk_t = torch.cat(lk)
        res.update({"k": k, f"L_{k}": float(lk_t.mean()),
                    f"L_{k}_bpd": float(bits_per_dim(lk_t.mean(), dims)),
                    # One example has no spread to estimate: null, not NaN or 0.
                    f"L_{k}_stderr": (float(lk_t.std() / math.sqrt(lk_t.numel()))
                                      if lk_t.numel() > 1 else None)})
        res["per_example"][f"L_{k}"] = lk_t.tolist()
    return res



@torch.no_grad()
def validation_statistics(model: nn.Module, split: ImageSplit, kind: str, bits: int, *,
                          batch_size: int = 100, device=None, max_batches: int | None = None,
                          n_examples: int | None = None) -> dict:
    """One eval-mode pass over a split: mean ELBO, log p(x|z) and KL per group (nats/example).

    The ELBO is summed exactly as :func:`validation_elbo` sums it, so the two
    agree bit for bit. ``max_batches`` or ``n_examples`` (the smaller wins) limit the pass.
    Returns {"elbo", "log_px", "kl_groups": {group: nats}, "n"}.
    """
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    elbo, log_px, count = 0.0, 0.0, 0
    kl = None
    limits = [v for v in (max_batches and max_batches * batch_size, n_examples) if v]
    limit = min(limits) if limits else None
    try:
        for x in split_batches(split, kind, bits, batch_size, device, limit):
            out = model(x)
            elbo += float(out.elbo.double().sum())
            log_px += float(out.log_px.double().sum())
            part = out.kl_per_group.double().sum(0)
            kl = part if kl is None else kl + part
            count += x.shape[0]
    finally:
        model.train(was)
    n = max(count, 1)
    groups = list(getattr(model, "group_names", []))
    kl_list = (kl / n).tolist() if kl is not None else [0.0] * len(groups)
    return {"elbo": elbo / n, "log_px": log_px / n,
            "kl_groups": dict(zip(groups, kl_list, strict=False)), "n": count}
