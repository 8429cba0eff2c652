"""Anomaly scores from one sweep over k: L_K, L^{>k}_K and the likelihood ratio LLR^{>k}.

For an image x (nats per example, K importance samples):

* ``L_K(x)``: the importance-weighted bound (k = 0); a lower bound on log p(x).
* ``L^{>k}_K(x)``: eq. 2 of the paper, z_<=k drawn from p(z_<=k | z_>k); a lower bound too.
* ``LLR^{>k}(x) = L_K(x) - L^{>k}_K(x)`` (Havtorn et al. 2021): how much better x is explained
  when the k lowest layers may adapt to it. High for out-of-distribution inputs, whose
  low-level statistics the lower layers fit while the semantics (z_>k) do not.
* the ``_mean`` variants set z_<=k to the conditional prior means instead of drawing them, as
  in Havtorn et al.'s code: deterministic given the draws of z_>k, and *not* a bound.

Every k of one batch shares the bottom-up pass (for BIVA and the VAE its z^BU draws too), so
``L - L^{>k}`` compares the two bounds on the same draws of q's bottom-up path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biva.data import ImageSplit, to_model_input
from biva.objectives.importance import samples_per_pass

# score name -> (quantity, prior mode). Anomaly direction: see ``anomaly``.
SCORES = ("elbo", "lk", "llr", "lk_mean", "llr_mean")
SCORE_HELP = {
    "elbo": "L_K (k = 0): the likelihood bound itself; anomaly = -L_K",
    "lk": "L^{>k}_K, z_<=k drawn from p(z_<=k | z_>k) (a bound); anomaly = -L^{>k}_K",
    "llr": "LLR^{>k} = L_K - L^{>k}_K (z_<=k drawn); anomaly = LLR",
    "lk_mean": "L^{>k} with z_<=k at the conditional prior means (not a bound); anomaly = -it",
    "llr_mean": "L_K - L^{>k} with z_<=k at the prior means (not a bound); anomaly = it",
}


def parse_scores(text: str) -> list[str]:
    """"elbo,llr" -> ["elbo", "llr"]; '-' may stand for '_' (llr-mean)."""
    names = [t.strip().replace("-", "_") for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SCORES]
    if not names or bad:
        raise ValueError(f"--score: expected a comma-separated list of {', '.join(SCORES)}; "
                         f"found {text!r}")
    return list(dict.fromkeys(names))


def score_ks(score: str, ks: Sequence[int]) -> list[int]:
    """The k a score is defined for: elbo only k = 0, the ratios only k >= 1."""
    if score == "elbo":
        return [0]
    if score in ("llr", "llr_mean", "lk_mean"):
        return [k for k in ks if k >= 1]
    return list(ks)


@dataclass
class BoundSweep:
    """Per-example bounds of one sweep: ``bounds[(mode, k)]`` (N,) float64 nats, where mode is
    "sample" (L^{>k}_K, k = 0 is L_K) or "mean" (z_<=k at the prior means)."""

    bounds: dict[tuple[str, int], Tensor]

    def value(self, score: str, k: int) -> Tensor:
        """The score's own quantity (N,) in nats: L_K, L^{>k}_K, or the ratio L_K - L^{>k}."""
        L = self.bounds[("sample", 0)]
        if score == "elbo":
            return L
        if score == "lk":
            return self.bounds[("sample", k)]
        if score == "lk_mean":
            return self.bounds[("mean", k)]
        if score == "llr":
            return L - self.bounds[("sample", k)]
        if score == "llr_mean":
            return L - self.bounds[("mean", k)]
        raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORES)}")

    def anomaly(self, score: str, k: int) -> Tensor:
        """Anomaly score (N,), higher = more anomalous: -L for the bounds, +LLR for ratios."""
        v = self.value(score, k)
        return v if score.startswith("llr") else -v


def needed_bounds(scores: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int]]:
    """The (mode, k) bounds the ``scores`` need over ``ks``: one top-down pass each a batch."""
    need = {("sample", 0)}
    for s in scores:
        for k in score_ks(s, ks):
            need.add(("mean" if s.endswith("_mean") else "sample", k))
    return sorted(need, key=lambda mk: (mk[0] != "sample", mk[1]))


@torch.no_grad()
def bound_sweep(model: nn.Module, x: Tensor, ks: Sequence[int], *,
                scores: Sequence[str] = ("elbo", "lk", "llr"), n_samples: int = 1,
                max_batch: int = 4096, share_bottom_up: bool = True) -> BoundSweep:
    """Every bound the ``scores`` need for every k, for x (B, C, H, W) in model-input space.

    K = ``n_samples`` importance samples per example, drawn in chunks of at most ``max_batch``
    rows; within a chunk the bottom-up pass runs once and is shared by every (mode, k)
    (``share_bottom_up=False``: one full pass each, the reference for the speed-up).
    Log-mean-exp over the K samples in float64. Eval mode; results on x's device.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    need = needed_bounds(scores, ks)
    b = x.shape[0]
    chunk = samples_per_pass(n_samples, b, max_batch, x.device)
    shared = share_bottom_up and hasattr(model, "_bottom_up") and _accepts_bottom_up(model)
    was_training = model.training
    model.eval()
    totals: dict[tuple[str, int], Tensor] = {}
    try:
        for start in range(0, n_samples, chunk):
            c = min(chunk, n_samples - start)
            bu = model._bottom_up(x, c) if shared else None
            for mode, k in need:
                kw = {"prior_mode": mode} if mode != "sample" else {}
                if bu is not None:
                    kw["bottom_up"] = bu
                lw = model(x, n_samples=c, prior_layers=k, **kw).log_weight
                lse = torch.logsumexp(lw.double().view(c, b), dim=0)
                key = (mode, k)
                totals[key] = lse if key not in totals else torch.logaddexp(totals[key], lse)
    finally:
        model.train(was_training)
    return BoundSweep({key: v - math.log(n_samples) for key, v in totals.items()})


def _accepts_bottom_up(model: nn.Module) -> bool:
    import inspect

    return "bottom_up" in inspect.signature(model.forward).parameters


@torch.no_grad()
def sweep_batches(model: nn.Module, batches: Iterable[Tensor], ks: Sequence[int], *,
                  scores: Sequence[str] = ("elbo", "lk", "llr"), n_samples: int = 1,
                  max_batch: int = 4096, progress: Callable[[int], None] | None = None
                  ) -> BoundSweep:
    """:func:`bound_sweep` over batches (B_i, C, H, W) of model input, concatenated in order;
    bounds returned on the CPU (empty (0,) tensors when there are no batches)."""
    device = next(model.parameters()).device
    parts: dict[tuple[str, int], list[Tensor]] = {key: [] for key in needed_bounds(scores, ks)}
    for x in batches:
        sweep = bound_sweep(model, x.to(device), ks, scores=scores, n_samples=n_samples,
                            max_batch=max_batch)
        for key, v in sweep.bounds.items():
            parts[key].append(v.cpu())
        if progress is not None:
            progress(x.shape[0])
    empty = torch.zeros(0, dtype=torch.float64)
    return BoundSweep({key: torch.cat(v) if v else empty for key, v in parts.items()})


@torch.no_grad()
def sweep_split(model: nn.Module, split: ImageSplit, kind: str, bits: int, ks: Sequence[int], *,
                scores: Sequence[str] = ("elbo", "lk", "llr"), n_samples: int = 1,
                batch_size: int = 100, max_batch: int = 4096, n_examples: int = 0,
                progress: Callable[[int], None] | None = None) -> BoundSweep:
    """:func:`bound_sweep` over the first ``n_examples`` (0: all) of a split ready for
    evaluation (binary data already drawn), converted to model input a batch at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split) if not n_examples else min(n_examples, len(split))
    batches = (to_model_input(split.images[i:min(i + batch_size, n)], kind, bits)
               for i in range(0, n, batch_size))
    return sweep_batches(model, batches, ks, scores=scores, n_samples=n_samples,
                         max_batch=max_batch, progress=progress)
