"""Classification by a semi-supervised model over a labelled split: q(y|x), the error, the
confusion matrix, and the bounds with y summed out (nats per example)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from biva.data import ImageSplit, to_model_input
from biva.utils.rng import seeded_eval


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts (C, C) int64: row = true class, column = predicted class."""
    idx = labels.long().cpu() * num_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)



def classification_summary(probs: Tensor, labels: Tensor,
                           class_names: list[str] | None = None) -> dict:
    """Error (fraction), accuracy, per-class accuracy and confusion matrix from probs (N, C)."""
    C = probs.shape[1]
    pred = probs.argmax(1).cpu()
    cm = confusion_matrix(pred, labels, C)
    per_class = cm.diag().double() / cm.sum(1).clamp_min(1).double()
    err = float((pred != labels.cpu()).double().mean()) if len(labels) else math.nan
    return {"n_examples": int(len(labels)), "error": err, "accuracy": 1.0 - err,
            "classes": list(class_names) if class_names else [str(c) for c in range(C)],
            "per_class_accuracy": per_class.tolist(), "confusion": cm.tolist()}



def generative_posterior(class_bounds: Tensor) -> Tensor:
    """The generative model's own class posterior: class_bounds (K, B, C) of L(x, y) for K draws
    (nats) -> (B, C) log p(y | x) = log softmax_y (log mean_k exp L_k(x, y)), p(y) uniform."""
    return torch.log_softmax(torch.logsumexp(class_bounds.double(), 0), dim=1)



def generative_summary(log_p_gen: Tensor, probs_q: Tensor, labels: Tensor) -> dict:
    """How much the generative model knows about y, from its posterior (B, C) (log) and q(y|x).

    ``error``: argmax_y p(y | x) against the labels; ``class_information_nats``: the mean of
    log C - H(p(y | x)) (0: the model ignores y, log C: it names one class per image);
    ``agreement_with_q``: the fraction where p(y | x) and q(y | x) pick the same class."""
    C = log_p_gen.shape[1]
    pick = log_p_gen.argmax(1).cpu()
    entropy = torch.special.entr(log_p_gen.exp()).sum(1)   # 0 log 0 = 0
    return {"error": float((pick != labels.cpu()).double().mean()),
            "class_information_nats": float((math.log(C) - entropy).mean()),
            "agreement_with_q": float((pick == probs_q.argmax(1).cpu()).double().mean())}



@torch.no_grad()
def predict_proba(model, x: Tensor, *, batch_size: int = 100, n_samples: int = 1,
                  seed: int | None = 0) -> Tensor:
    """q(y | x) for model-input images x (N, C, H, W): (N, num_classes) float32, rows sum to 1.

    Each row averages ``n_samples`` draws of z^BU; ``seed`` makes the draws reproducible.
    """
    _check_count("batch_size", batch_size)
    return predict_proba_batches(model, (x[s:s + batch_size]
                                         for s in range(0, x.shape[0], batch_size)),
                                 n_samples=n_samples, seed=seed)


def predict_proba_batches(model, batches: Iterable[Tensor], *, n_samples: int = 1,
                          seed: int | None = 0) -> Tensor:
    """:func:`predict_proba` over model-input batches made as they are needed (one batch in
    memory at a time): the same draws, batch for batch, as one call on their concatenation
    split at the same places. Returns (N, num_classes) float32."""
    _check_count("n_samples", n_samples)
    device = model.out_conv.v.device
    out = []
    with seeded_eval(model, seed):
        for x in batches:
            out.append(model.classify(x.to(device), n_samples).cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, found {value!r}")


def labelled_batches(split: ImageSplit, kind: str, bits: int, batch_size: int, device,
                     limit: int | None):
    """(model input (B, C, H, W), labels (B,)) batches of the first ``limit`` examples (all when
    None or 0) of a labelled split."""
    n = len(split) if not limit else min(limit, len(split))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (to_model_input(split.images[start:stop], kind, bits).to(device),
               split.labels[start:stop])



@torch.no_grad()
def evaluate_classification(model, split: ImageSplit, kind: str, bits: int, *,
                            batch_size: int = 100, n_examples: int = 0, n_samples: int = 1,
                            seed: int | None = 0, with_bounds: bool = True,
                            class_names: list[str] | None = None) -> dict:
    """Test error, confusion matrix and (``with_bounds``) the mean bounds over a labelled split.

    Bounds, nats per example: ``elbo_U`` = -U (eq. 19) and ``L_1`` = E log sum_y p(x,y,z)/q(z|x,y),
    both with y marginalized exactly; ``log_px`` and ``kl_groups`` are q(y|x)-weighted.
    ``generative_k1``: :func:`generative_summary` of p(y | x) ∝ exp L_1(x, y), the classes the
    generative model itself assigns (what the unlabelled term pulls q(y | x) towards).
    Predictions average ``n_samples`` draws of z^BU.
    """
    if split.labels is None:
        raise ValueError("this split has no labels: cannot measure a classification error")
    device = model.out_conv.v.device
    probs, labels, u_bound, l1, log_px, kl, gen = [], [], [], [], [], [], []
    with seeded_eval(model, seed):
        for x, y in labelled_batches(split, kind, bits, batch_size, device, n_examples):
            if with_bounds:
                out = model(x)
                u_bound.append(out.bound.double().cpu())
                l1.append(out.log_weight.double().cpu())
                log_px.append(out.log_px.double().cpu())
                kl.append(out.kl.double().cpu())
                gen.append(generative_posterior(out.class_bounds[None]).cpu())
                p = torch.softmax(out.logits.float(), 1).cpu()
                if n_samples > 1:  # the forward pass gave one draw; add n_samples - 1 more
                    p = (p + (n_samples - 1) * model.classify(x, n_samples - 1).cpu()) / n_samples
            else:
                p = model.classify(x, n_samples).cpu()
            probs.append(p)
            labels.append(y)
    res = classification_summary(torch.cat(probs), torch.cat(labels), class_names)
    if with_bounds:
        # From the same single draw per class (K = 1), so it costs nothing extra.
        res["generative_k1"] = generative_summary(torch.cat(gen), torch.cat(probs),
                                                  torch.cat(labels))
        res["elbo_U"] = float(torch.cat(u_bound).mean())
        res["L_1"] = float(torch.cat(l1).mean())
        res["log_px"] = float(torch.cat(log_px).mean())
        res["kl_groups"] = dict(zip(model.group_names, torch.cat(kl).mean(0).tolist(),
                                    strict=True))
    res["n_samples"] = n_samples
    return res
