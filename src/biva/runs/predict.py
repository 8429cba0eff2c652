"""Class probabilities q(y|x) from a semi-supervised run directory: for raw images in Python,
and for a data set split or an .npz file written to a predictions file (``biva predict``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biva.config import DataKind
from biva.data import evaluation_split, load_run_data, to_model_input
from biva.data.registry import npz_images
from biva.evaluation.classification import images_to_model_input, predict_raw
from biva.objectives.classification import classification_summary, predict_proba
from biva.runs.loading import load_trained
from biva.utils.atomic import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class PredictSettings:
    """What to classify: a data set ``data`` (its ``split``, read from ``data_root``) or an
    .npz file ``npz`` of images (optional labels); the first ``n_examples`` (0: all).
    ``classifier_draws``: z^BU draws q(y|x) averages; ``seed``: of those draws and of
    binarizing grey-level images; ``out``: .npz or .json (default
    RUN_DIR/predictions_<source>.npz)."""

    data: str | None = None
    npz: Path | None = None
    split: str = "test"
    data_root: str | None = None
    n_examples: int = 0
    classifier_draws: int = 1
    checkpoint: str = "best"
    batch_size: int = 100
    seed: int = 0
    out: Path | None = None

    def __post_init__(self):
        if (self.data is None) == (self.npz is None):
            raise ValueError("give one source: a data set (--data NAME) or an .npz (--npz FILE)")
        if self.batch_size < 1 or self.classifier_draws < 1 or self.n_examples < 0:
            raise ValueError(f"batch_size and classifier_draws must be >= 1 and n_examples >= 0, "
                             f"found {self.batch_size}, {self.classifier_draws}, "
                             f"{self.n_examples}")


def predict(run_dir: str | Path, images: np.ndarray | Tensor, *, checkpoint: str = "best",
            device: str | torch.device = "cpu", n_samples: int = 1, batch_size: int = 100,
            seed: int = 0) -> Tensor:
    """Class probabilities (N, C) for raw ``images`` from a semi-supervised run's EMA model
    (``n_samples``: z^BU draws averaged)."""
    model, cfg, _ = _classifier(run_dir, checkpoint, device)
    return predict_raw(model, cfg.model, images, n_samples=n_samples, batch_size=batch_size,
                       seed=seed)


def _classifier(run_dir, checkpoint, device):
    model, cfg, state = load_trained(run_dir, checkpoint, device)
    if not hasattr(model, "classify"):
        raise ValueError(f"{run_dir} is not a semi-supervised run (data.labels_per_class = 0): "
                         "it has no classifier")
    return model, cfg, state


def _inputs(model, cfg, s: PredictSettings):
    """(model input (N, C, H, W), labels or None, class names or None, source name)."""
    if s.data is not None:
        cfg.data.name = s.data
        if s.data_root:
            cfg.data.root = s.data_root
        data = load_run_data(cfg)
        split = evaluation_split(data, s.split, seed=cfg.train.seed)
        n = s.n_examples or len(split)
        x = to_model_input(split.images[:n], data.kind, cfg.model.bits)
        labels = None if split.labels is None else split.labels[:n]
        return x, labels, list(data.class_names or []) or None, f"{s.data}_{s.split}"
    images, _, labels = npz_images(s.npz)
    n = s.n_examples or len(images)
    x = images_to_model_input(images[:n], DataKind.for_likelihood(cfg.model.likelihood),
                              cfg.model.bits, tuple(cfg.model.input_shape), s.seed)
    if labels is not None:
        labels = torch.from_numpy(labels[:n])
        bad = labels[(labels < 0) | (labels >= model.num_classes)]
        if bad.numel():
            raise ValueError(f"{s.npz}: labels must be 0..{model.num_classes - 1} (the model's "
                             f"classes); found {sorted(set(bad.tolist()))[:5]}")
    return x, labels, None, s.npz.stem


def predict_run(run_dir: str | Path, settings: PredictSettings, *,
                device: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Classify ``settings``' images with the run's EMA classifier, write 'probs' (N, C),
    'pred' (N,) and 'labels' (when known); returns ({"n", "source"[, "error",
    "accuracy"]}, the file written)."""
    model, cfg, _ = _classifier(run_dir, settings.checkpoint, device)
    x, labels, names, source = _inputs(model, cfg, settings)
    probs = predict_proba(model, x, batch_size=settings.batch_size,
                          n_samples=settings.classifier_draws, seed=settings.seed)
    result = {"probs": probs.numpy(), "pred": probs.argmax(1).numpy()}
    if labels is not None:
        result["labels"] = labels.numpy()
    out = settings.out or Path(run_dir) / f"predictions_{source}.npz"
    if out.suffix == ".json":
        atomic_write_json(out, result)
    else:
        buf = io.BytesIO()
        np.savez(buf, **result)
        atomic_write_bytes(out, buf.getvalue())
    summary = {"n": int(len(probs)), "source": source}
    if labels is not None:
        s = classification_summary(probs, labels, names)
        summary.update(error=s["error"], accuracy=s["accuracy"])
    return summary, out
