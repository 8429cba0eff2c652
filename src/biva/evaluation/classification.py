"""Classification with a semi-supervised model: predictions, error, confusion matrix, bounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data import ImageSplit, bernoulli_draw, to_model_input
from ..utils.atomic import atomic_write_json
from ..utils.rng import seeded_eval
from .style import save_png


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
    device = model.out_conv.v.device
    out = []
    with seeded_eval(model, seed):
        for start in range(0, x.shape[0], batch_size):
            out.append(model.classify(x[start:start + batch_size].to(device), n_samples).cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def _split_batches(split: ImageSplit, kind: str, bits: int, batch_size: int, device,
                   limit: int | None):
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
        for x, y in _split_batches(split, kind, bits, batch_size, device, n_examples):
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


def plot_confusion(summary: dict, path: str | Path, title: str = "") -> Path:
    """Write the confusion matrix of :func:`classification_summary` as a PNG heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(summary["confusion"])
    names = summary["classes"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.6 + 0.5 * len(names)),
                           constrained_layout=True)
    # Row-normalized colours (recall per true class); the cells print the raw counts.
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"error {100 * summary['error']:.2f}% (n = {summary['n_examples']})")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    path = save_png(fig, path)
    plt.close(fig)
    return path


def write_confusion(summary: dict, run_dir: str | Path, split: str) -> tuple[Path, Path]:
    """``RUN/confusion_<split>.json`` and ``RUN/figures/confusion_<split>.png``; predictions
    averaged over n > 1 z^BU draws go to ``confusion_<split>_samples<n>.*`` beside them."""
    run_dir = Path(run_dir)
    n = summary.get("n_samples", 1)
    name = split if n == 1 else f"{split}_samples{n}"
    json_path = run_dir / f"confusion_{name}.json"
    keys = ("n_examples", "error", "accuracy", "classes", "per_class_accuracy", "confusion")
    atomic_write_json(json_path, {"split": split, "n_samples": n, **{k: summary[k] for k in keys}})
    draws = f", q(y|x) over {n} draws" if n > 1 else ""
    return json_path, plot_confusion(summary, run_dir / "figures" / f"confusion_{name}.png",
                                     title=f"{split}: error {100 * summary['error']:.2f}%{draws}")


def images_to_model_input(images: np.ndarray | Tensor, kind: str, bits: int,
                          input_shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """Raw images -> model input (N, C, H, W). (N, H, W), (N, H, W, C) and (N, C, H, W) accepted.

    Binary models take {0, 1} values as they are; grey levels (uint8 0..255 or floats in [0, 1])
    get one seeded Bernoulli draw, the evaluation protocol of dynamically binarized data.
    8-bit models take uint8 0..255.
    """
    arr = images.cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"images: expected real numbers (uint8 0..255, or floats in [0, 1] for "
                         f"a binary model), found dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))
        raise ValueError(f"images: {len(bad)} non-finite values (NaN or inf), the first in "
                         f"image {int(bad[0, 0])}")
    if not arr.flags.writeable:     # e.g. read_idx's view of a file buffer
        arr = arr.copy()
    x = torch.as_tensor(arr)
    c, h, w = input_shape
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4 and tuple(x.shape[1:]) != (c, h, w) and tuple(x.shape[1:]) == (h, w, c):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(f"images: expected (N, {c}, {h}, {w}), (N, {h}, {w}, {c}) or, for one "
                         f"channel, (N, {h}, {w}); found {tuple(x.shape)}")
    x = x.contiguous()
    if kind == "binary":
        if x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all()):
            return x.to(torch.float32)
        grey = x.to(torch.float32) / (255.0 if not x.is_floating_point() else 1.0)
        if bool(((grey < 0) | (grey > 1)).any()):
            raise ValueError("binary model: images must be {0, 1}, uint8 0..255 or floats "
                             "in [0, 1]")
        return bernoulli_draw(grey, seed, "predict").to(torch.float32)
    if x.dtype != torch.uint8:
        raise ValueError(f"8-bit model: images must be uint8 0..255, found {x.dtype}")
    return to_model_input(x, kind, bits)


def predict_raw(model, model_cfg, images: np.ndarray | Tensor, *, n_samples: int = 1,
                batch_size: int = 100, seed: int = 0) -> Tensor:
    """Class probabilities (N, C) of a semi-supervised ``model`` (its ``ModelConfig``
    ``model_cfg``) for raw ``images``, read as :func:`images_to_model_input` reads them."""
    kind = "binary" if model_cfg.likelihood == "bernoulli" else "8bit"
    x = images_to_model_input(images, kind, model_cfg.bits, tuple(model_cfg.input_shape), seed)
    return predict_proba(model, x, batch_size=batch_size, n_samples=n_samples, seed=seed)


def predict(run_dir: str | Path, images: np.ndarray | Tensor, *, checkpoint: str = "best",
            device: str | torch.device = "cpu", n_samples: int = 1, batch_size: int = 100,
            seed: int = 0) -> Tensor:
    """Class probabilities (N, C) for raw ``images`` from a semi-supervised run's EMA model."""
    from .loading import load_trained

    model, cfg, _ = load_trained(run_dir, checkpoint, device)
    if not hasattr(model, "classify"):
        raise ValueError(f"{run_dir} is not a semi-supervised run (data.labels_per_class = 0)")
    return predict_raw(model, cfg.model, images, n_samples=n_samples, batch_size=batch_size,
                       seed=seed)


def write_class_samples(model, kind: str, out: str | Path, per_class: int = 10,
                        temperature: float | list[float] = 1.0, seed: int = 0,
                        mode: str = "mean") -> Path:
    """A PNG grid of class-conditional samples: row c holds ``per_class`` draws of class c."""
    from .images import save_grid

    gen = torch.Generator(device=model.out_conv.v.device).manual_seed(seed)
    with seeded_eval(model, seed):
        images = model.class_grid(per_class, temperature, generator=gen, mode=mode)
    return save_grid(images, out, kind=kind, nrow=per_class)
