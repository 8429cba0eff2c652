"""Classification with a semi-supervised model: predictions, error, confusion matrix, bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biva.config.kinds import DataKind
from biva.data import ImageSplit, fixed_binarization, to_model_input
from biva.evaluation.style import save_png
from biva.objectives.classification import predict_proba
from biva.utils.atomic import atomic_write_json
from biva.utils.images import save_grid
from biva.utils.rng import seeded_eval


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
                          input_shape: tuple[int, ...], seed: int = 0, first: int = 0,
                          levels: bool | None = None) -> Tensor:
    """Raw images -> model input (N, C, H, W). (N, H, W), (N, H, W, C) and (N, C, H, W) accepted.

    Binary models take {0, 1} values as they are; grey levels (uint8 0..255 or floats in [0, 1])
    get one seeded Bernoulli draw, pixel on with probability level / 255: the draw that
    evaluates a dynamically binarized split (``fixed_binarization``), so image i of a raw array
    gets exactly the binary image that image i of a split gets with the same seed (the
    command line's ``--data`` route uses the run's ``train.seed``). 8-bit models take uint8
    0..255. ``first``: the index of ``images[0]`` in a longer array converted in pieces (its
    draws, and the image numbers errors name); ``levels``: whether {0, 1} values are grey
    levels to draw from (None: only when some value is neither 0 nor 1).
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
                         f"image {first + int(bad[0, 0])}")
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
        if levels is None:
            levels = not (x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all()))
        if not levels:
            return x.to(torch.float32)
        grey = x.to(torch.float32) / (255.0 if not x.is_floating_point() else 1.0)
        if bool(((grey < 0) | (grey > 1)).any()):
            raise ValueError("binary model: images must be {0, 1}, uint8 0..255 or floats "
                             "in [0, 1]")
        return fixed_binarization(ImageSplit(grey), seed, first).images.to(torch.float32)
    if x.dtype != torch.uint8:
        raise ValueError(f"8-bit model: images must be uint8 0..255, found {x.dtype}")
    return to_model_input(x, kind, bits)


def raw_batches(images: np.ndarray | Tensor, kind: str, bits: int,
                input_shape: tuple[int, ...], seed: int, batch_size: int):
    """:func:`images_to_model_input` of ``images`` a batch at a time (memory flat in N: a
    uint8 array stays uint8 until its batch is converted); the draws of one call."""
    # Whether {0, 1} values are binary pixels or grey levels is decided for the whole array.
    step = 65536
    levels = not all(bool(((c == 0) | (c == 1)).all())
                     for c in (np.asarray(images[i:i + step]) for i in range(0, len(images), step)))
    for start in range(0, len(images), batch_size):
        yield images_to_model_input(images[start:start + batch_size], kind, bits, input_shape,
                                    seed, first=start, levels=levels)


def predict_raw(model, model_cfg, images: np.ndarray | Tensor, *, n_samples: int = 1,
                batch_size: int = 100, seed: int = 0) -> Tensor:
    """Class probabilities (N, C) of a semi-supervised ``model`` (its ``ModelConfig``
    ``model_cfg``) for raw ``images``, read as :func:`images_to_model_input` reads them."""
    kind = DataKind.for_likelihood(model_cfg.likelihood)
    x = images_to_model_input(images, kind, model_cfg.bits, tuple(model_cfg.input_shape), seed)
    return predict_proba(model, x, batch_size=batch_size, n_samples=n_samples, seed=seed)


def write_class_samples(model, kind: str, out: str | Path, per_class: int = 10,
                        temperature: float | list[float] = 1.0, seed: int = 0,
                        mode: str = "mean") -> Path:
    """A PNG grid of class-conditional samples: row c holds ``per_class`` draws of class c."""

    gen = torch.Generator(device=model.out_conv.v.device).manual_seed(seed)
    with seeded_eval(model, seed):
        images = model.class_grid(per_class, temperature, generator=gen, mode=mode)
    return save_grid(images, out, kind=kind, nrow=per_class)
