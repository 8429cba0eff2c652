"""Bounds over whole dataset splits: ELBO (L_1), L_K, L^{>k}_K and per-group KL."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data import DatasetSplits, ImageSplit, fixed_binarization, to_model_input
from ..objectives import bits_per_dim, importance_weighted_bound
from ..utils.rng import seeded_eval


def evaluation_split(data: DatasetSplits, which: str, seed: int = 0) -> ImageSplit:
    """The split ``which`` ("train"/"valid"/"test") ready for evaluation.

    Dynamically binarized data get one fixed, seeded Bernoulli draw, so every evaluation and
    every model sees the same binary images.
    """
    split = getattr(data, which)
    if data.binarization == "dynamic":
        split = fixed_binarization(split, seed)
    return split


def _batches(split: ImageSplit, kind: str, bits: int, batch_size: int, device,
             limit: int | None = None):
    n = len(split) if limit is None else min(limit, len(split))
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
        for x in _batches(split, kind, bits, batch_size, device, limit):
            total += float(model(x).elbo.double().sum())
            count += x.shape[0]
    finally:
        model.train(was)
    return total / max(count, 1)


def evaluate_bounds(model: nn.Module, split: ImageSplit, kind: str, bits: int, *,
                    k: int = 1000, batch_size: int = 100, max_batch: int = 4096,
                    n_examples: int = 0, prior_layers: int = 0, device=None,
                    progress=None, seed: int | None = 0) -> dict:
    """L_1 (with per-group KL) and L_k over a split: nats per example and bits/dim.

    Returns a JSON-ready dict; ``per_example`` holds the (N,) L_1 and L_k values in nats.
    ``seed`` fixes the latent draws (the same checkpoint gives the same numbers; None: the
    global RNG as it is).
    """
    device = device or next(model.parameters()).device
    l1, lk, kl = [], [], []
    limit = n_examples or None
    with seeded_eval(model, seed):
        for x in _batches(split, kind, bits, batch_size, device, limit):
            out = model(x, prior_layers=prior_layers)
            l1.append(out.elbo.double().cpu())
            kl.append(out.kl_per_group.double().cpu())
            if k > 1:
                lk.append(importance_weighted_bound(model, x, k, prior_layers=prior_layers,
                                                    max_batch=max_batch).cpu())
            if progress is not None:
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
