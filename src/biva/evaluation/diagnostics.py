"""Diagnostics of a hierarchy: KL per latent group over training (Fig. 2), active units,
effective sample size of the importance weights, and the L_1 / log p(x|z) curves (Fig. 9).

All quantities are in nats per example unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from biva.data import ImageSplit
from biva.objectives import bits_per_dim, effective_sample_size, log_weights
from biva.objectives.splits import split_batches, validation_statistics
from biva.utils.jsonl import read_jsonl

#: Burda et al. (2016, "Importance Weighted Autoencoders", sec. 5.2): a latent dimension u is
#: active if Cov_x(E_{q(u|x)}[u]) > 0.01, i.e. its posterior mean moves with the input.
ACTIVE_UNIT_THRESHOLD = 0.01


def _records(metrics: str | Path | Sequence[dict]) -> list[dict]:
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        return read_jsonl(path / "metrics.jsonl" if path.is_dir() else path)
    return list(metrics)


def kl_per_epoch(metrics: str | Path | Sequence[dict]) -> dict:
    """KL of every latent group per training epoch (the data of Fig. 2), from train records.

    ``metrics``: a run dir, a metrics.jsonl path or its records. Each record's ``kl_groups``
    is weighted by the steps it covers. Returns {"epochs": [E], "groups": [G], "kl": G x E nats}.
    """
    train = sorted((r for r in _records(metrics) if r.get("kind") == "train"
                    and r.get("kl_groups")), key=lambda r: r["step"])
    groups: list[str] = []
    sums: dict[int, dict[str, float]] = {}
    weights: dict[int, float] = {}
    prev_step = 0
    for r in train:
        # A record averages the steps since the previous one; weighting by their number makes
        # an epoch's value the mean over its steps even when the last interval is short.
        w = max(r["step"] - prev_step, 1)
        prev_step = r["step"]
        epoch = int(r.get("epoch", 0))
        acc = sums.setdefault(epoch, {})
        for g, v in r["kl_groups"].items():
            if g not in groups:
                groups.append(g)
            acc[g] = acc.get(g, 0.0) + w * float(v)
        weights[epoch] = weights.get(epoch, 0.0) + w
    epochs = sorted(sums)
    kl = [[sums[e][g] / weights[e] if g in sums[e] else math.nan for e in epochs]
          for g in groups]
    return {"epochs": epochs, "groups": groups, "kl": kl}


def training_curves(metrics: str | Path | Sequence[dict]) -> dict:
    """The columns behind Fig. 9: train ELBO (L_1), log p(x|z) and KL; validation ELBO.

    Returns {"train": {"step", "epoch", "elbo", "log_px", "kl"}, "valid": {"step", "elbo",
    "log_px", "kl"}}: lists in nats per example (None where a record lacks a value).
    """
    records = _records(metrics)
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    return {
        "train": {k: [r.get(k) for r in train] for k in ("step", "epoch", "elbo", "log_px", "kl")},
        "valid": {"step": [r.get("step") for r in valid],
                  "elbo": [r.get("valid_elbo") for r in valid],
                  "log_px": [r.get("valid_log_px") for r in valid],
                  "kl": [float(sum(r["valid_kl_groups"].values()))
                         if r.get("valid_kl_groups") else None for r in valid]},
    }


@torch.no_grad()
def posterior_means(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """E_q[z] of every latent group for every example: {group: (N, D)} (flattened, float64)."""
    was = model.training
    model.eval()
    means: dict[str, list[Tensor]] = {}
    try:
        for x in batches:
            for name, q in model(x).posteriors.items():
                means.setdefault(name, []).append(q.mu.detach().double().flatten(1).cpu())
    finally:
        model.train(was)
    names = [g for g in getattr(model, "group_names", means) if g in means]
    return {g: torch.cat(means[g]) for g in names}


def active_units_from_means(means: dict[str, Tensor],
                            threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
    """Count dimensions whose posterior mean varies over x: Var_x > ``threshold`` (Burda 2016).

    ``means``: {group: (N, D)}, N >= 2 examples. Returns {"threshold", "active", "dims",
    "per_group": {group: {"active", "dims"}}}. The variance is the unbiased one over the N rows.
    """
    per_group, active, dims = {}, 0, 0
    for name, mu in means.items():
        mu = mu.double().flatten(1)
        if mu.shape[0] < 2:
            raise ValueError(f"active units need at least 2 examples, found {mu.shape[0]}")
        count = int((mu.var(0) > threshold).sum())
        per_group[name] = {"active": count, "dims": int(mu.shape[1])}
        active, dims = active + count, dims + int(mu.shape[1])
    return {"threshold": threshold, "active": active, "dims": dims, "per_group": per_group}


def active_units(model: nn.Module, batches: Iterable[Tensor],
                 threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
    """Active units per latent group and in total over the examples of ``batches`` (B, C, H, W).

    See :func:`active_units_from_means`. For BIVA and the VAE the posterior mean of a group
    above z^BU_1 is taken given one draw of the z^BU below it.
    """
    return active_units_from_means(posterior_means(model, batches), threshold)


def ess_statistics(model: nn.Module, x: Tensor, k: int, *, max_batch: int = 4096) -> dict:
    """Effective sample size of k importance weights per example of x (B, C, H, W).

    ESS = (sum w)^2 / sum w^2 lies in [1, k]; a small ESS / k means L_k rests on few samples.
    Returns {"k", "mean", "median", "min", "max", "mean_fraction"}.
    """
    ess = effective_sample_size(log_weights(model, x, k, max_batch=max_batch)).float().cpu()
    return {"k": k, "mean": float(ess.mean()), "median": float(ess.median()),
            "min": float(ess.min()), "max": float(ess.max()),
            "mean_fraction": float(ess.mean() / k)}


def diagnose(model: nn.Module, split: ImageSplit, kind: str, bits: int, *,
             metrics: str | Path | Sequence[dict] | None = None, n_examples: int = 1000,
             batch_size: int = 250, ess_examples: int = 32, ess_k: int = 100, device=None
             ) -> dict:
    """All diagnostics of a trained model on a split (usually validation), JSON-ready.

    Uses the first ``n_examples`` (0: all) for the ELBO, log p(x|z), per-group KL and active
    units, and ``ess_examples`` of them with ``ess_k`` importance samples for the ESS; adds
    the KL-per-epoch table and the curves when ``metrics`` (a run dir or records) is given.
    """
    device = device or next(model.parameters()).device
    limit = n_examples or None
    n = len(split) if limit is None else min(limit, len(split))
    stats = validation_statistics(model, split, kind, bits, batch_size=batch_size,
                                  device=device, n_examples=n)
    dims = math.prod(split.images.shape[1:])
    res: dict = {
        "n_examples": stats["n"], "elbo": stats["elbo"],
        "elbo_bpd": float(bits_per_dim(stats["elbo"], dims)), "log_px": stats["log_px"],
        "kl": float(sum(stats["kl_groups"].values())), "kl_groups": stats["kl_groups"],
        "active_units": active_units(model, split_batches(split, kind, bits, batch_size, device,
                                                          n)),
    }
    if ess_examples > 0 and ess_k > 1:
        x = next(iter(split_batches(split, kind, bits, min(ess_examples, n), device, n)))
        res["ess"] = ess_statistics(model, x, ess_k)
    if metrics is not None:
        res["kl_per_epoch"] = kl_per_epoch(metrics)
        res["curves"] = training_curves(metrics)
    return res
