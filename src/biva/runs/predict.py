"""Class probabilities q(y|x) from a semi-supervised run directory: for raw images in Python,
and for a data set split or an .npz file written to a predictions file (``biva predict``)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from biva.config import DataKind
from biva.data import evaluation_split, image_files, load_run_data, read_folder, to_model_input
from biva.data.registry import npz_images
from biva.evaluation.classification import predict_raw, raw_batches
from biva.objectives.classification import classification_summary, predict_proba_batches
from biva.runs.loading import load_trained
from biva.runs.sample import free_path
from biva.utils.atomic import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class PredictSettings:
    """What to classify: a data set ``data`` (its ``split``, read from ``data_root``), an
    .npz file ``npz`` of images (optional labels) or ``images``, a folder of image files (or
    one file; read as :func:`~biva.data.read_folder` reads it, files in sorted order); the
    first ``n_examples`` (0: all).
    ``classifier_draws``: z^BU draws q(y|x) averages; ``seed``: of those draws and of
    binarizing grey-level images; ``out``: .npz or .json (default
    RUN_DIR/predictions_<source>.npz)."""

    data: str | None = None
    npz: Path | None = None
    images: Path | None = None
    split: str = "test"
    data_root: str | None = None
    n_examples: int = 0
    classifier_draws: int = 1
    checkpoint: str = "best"
    batch_size: int = 100
    seed: int = 0
    out: Path | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.data, self.npz, self.images)) != 1:
            raise ValueError("give one source: a data set (--data NAME), an .npz (--npz FILE) "
                             "or a folder of images (--images PATH)")
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


class _Inputs(NamedTuple):
    batches: Callable[[int], Iterable[Tensor]]   # batch size -> model-input batches
    labels: Tensor | None
    class_names: list[str] | None
    source: str                     # what the default output file is named after
    files: list[str] | None = None  # the image files, in row order (--images)


def _inputs(model, cfg, s: PredictSettings) -> _Inputs:
    """What ``s`` names, as the model's input."""
    if s.images is not None:
        images = read_folder(s.images, cfg, seed=s.seed)
        files = [str(f) for f in image_files(s.images)]
        n = s.n_examples or len(images)
        x = to_model_input(images[:n], DataKind.for_likelihood(cfg.model.likelihood),
                           cfg.model.bits)
        return _Inputs(_slices(x), None, None, f"images_{Path(s.images).stem}", files[:n])
    if s.data is not None:
        cfg.data.name = s.data
        if s.data_root:
            cfg.data.root = s.data_root
        data = load_run_data(cfg)
        split = evaluation_split(data, s.split, seed=cfg.train.seed)
        n = s.n_examples or len(split)
        x = to_model_input(split.images[:n], data.kind, cfg.model.bits)
        labels = None if split.labels is None else split.labels[:n]
        return _Inputs(_slices(x), labels, list(data.class_names or []) or None,
                       f"{s.data}_{s.split}")
    images, _, labels = npz_images(s.npz)
    n = s.n_examples or len(images)
    # Converted a batch at a time: 2 million uint8 digits once became 8.4 GB of float32.
    kind, shape = DataKind.for_likelihood(cfg.model.likelihood), tuple(cfg.model.input_shape)

    def batches(size: int):
        return raw_batches(images[:n], kind, cfg.model.bits, shape, s.seed, size)

    if labels is not None:
        labels = torch.from_numpy(labels[:n])
        bad = labels[(labels < 0) | (labels >= model.num_classes)]
        if bad.numel():
            raise ValueError(f"{s.npz}: labels must be 0..{model.num_classes - 1} (the model's "
                             f"classes); found {sorted(set(bad.tolist()))[:5]}")
    return _Inputs(batches, labels, None, s.npz.stem)


def _slices(x: Tensor) -> Callable[[int], Iterable[Tensor]]:
    return lambda size: (x[i:i + size] for i in range(0, x.shape[0], size))


def predict_run(run_dir: str | Path, settings: PredictSettings, *,
                device: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Classify ``settings``' images with the run's EMA classifier, write 'probs' (N, C),
    'pred' (N,) and 'labels' (when known); returns ({"n_examples", "source"[, "error",
    "accuracy"]}, the file written)."""
    model, cfg, _ = _classifier(run_dir, settings.checkpoint, device)
    batches, labels, names, source, files = _inputs(model, cfg, settings)
    probs = predict_proba_batches(model, batches(settings.batch_size),
                                  n_samples=settings.classifier_draws, seed=settings.seed)
    result = {"probs": probs.numpy(), "pred": probs.argmax(1).numpy()}
    if labels is not None:
        result["labels"] = labels.numpy()
    if files is not None:
        result["files"] = np.array(files)
    # A default name is never written over: two folders of one name get _2, _3, ...
    out = settings.out or free_path(Path(run_dir) / f"predictions_{source}.npz")
    if out.suffix == ".json":
        atomic_write_json(out, {k: v.tolist() for k, v in result.items()})
    else:
        buf = io.BytesIO()
        np.savez(buf, **result)
        atomic_write_bytes(out, buf.getvalue())
    summary = {"n_examples": int(len(probs)), "source": source}
    if labels is not None:
        s = classification_summary(probs, labels, names)
        summary.update(error=s["error"], accuracy=s["accuracy"])
    return summary, out
