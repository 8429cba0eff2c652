"""``biva predict``: class probabilities q(y|x) of a semi-supervised run for new data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..data import DATASET_NAMES, to_model_input
from ..data.formats import read_npz
from ..evaluation import evaluation_split
from ..evaluation.classification import (
    classification_summary,
    images_to_model_input,
    predict_proba,
)
from ..evaluation.loading import load_trained
from ..training import load_run_data
from ..utils.atomic import atomic_write_json
from .common import HelpFormatter, add_run_dir_argument, add_runtime_options, setup_runtime

_IMAGE_KEYS = ("images", "x", "data", "X", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="class probabilities from a semi-supervised run",
        description="Classify images with the EMA classifier q(y|x) of a semi-supervised run "
        "(data.labels_per_class > 0): a split of a dataset (--data NAME) or an .npz file of "
        "images (--npz FILE, array 'images' or 'x', optional 'labels'). Writes an .npz with "
        "'probs' (N, C), 'pred' (N,) and 'labels' when known; prints the error if labels are "
        "known.", formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a semi-supervised biva run directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", choices=DATASET_NAMES, metavar="NAME",
                     help=f"a dataset ({', '.join(DATASET_NAMES)})")
    src.add_argument("--npz", type=Path, metavar="FILE", help="an .npz file of images")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                   help="split of --data")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--n-examples", type=int, default=0, help="first N examples (0: all)")
    p.add_argument("--samples", type=int, default=1,
                   help="z^BU draws averaged per prediction")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the z^BU draws (and of binarizing grey-level --npz images)")
    p.add_argument("--out", type=Path, default=None,
                   help="output .npz or .json (default: RUN_DIR/predictions_<source>.npz)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _read_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    arrays = read_npz(path)
    key = next((k for k in _IMAGE_KEYS if k in arrays), None)
    if key is None:
        raise ValueError(f"{path}: no image array; expected one of {list(_IMAGE_KEYS)}, found "
                         f"{sorted(arrays)}")
    lkey = next((k for k in _LABEL_KEYS if k in arrays), None)
    if lkey is None:
        return arrays[key], None
    y = np.asarray(arrays[lkey]).reshape(-1)
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all())
    if not integral:
        raise ValueError(f"{path}: array {lkey!r}: expected integer class labels, found dtype "
                         f"{y.dtype}" + (f" ({y[:3].tolist()} ...)" if y.size else ""))
    if len(y) != len(arrays[key]):
        raise ValueError(f"{path}: {len(arrays[key])} images but {len(y)} labels in {lkey!r}")
    return arrays[key], y.astype(np.int64)


def _check_labels(labels: torch.Tensor, num_classes: int, path: Path) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(f"{path}: labels must be 0..{num_classes - 1} (the model's classes); "
                         f"found {sorted(set(bad.tolist()))[:5]}")


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    model, cfg, _ = load_trained(args.run_dir, args.checkpoint, device)
    if not hasattr(model, "classify"):
        raise ValueError(f"{args.run_dir} is not a semi-supervised run "
                         f"(data.labels_per_class = 0): it has no classifier")
    kind = "binary" if cfg.model.likelihood == "bernoulli" else "8bit"
    if args.data is not None:
        cfg.data.name = args.data
        if args.data_root:
            cfg.data.root = args.data_root
        data = load_run_data(cfg)
        split = evaluation_split(data, args.split, seed=cfg.train.seed)
        n = args.n_examples or len(split)
        x = to_model_input(split.images[:n], data.kind, cfg.model.bits)
        labels = None if split.labels is None else split.labels[:n]
        names = list(data.class_names) if data.class_names else None
        source = f"{args.data}_{args.split}"
    else:
        images, labels_np = _read_images(args.npz)
        n = args.n_examples or len(images)
        x = images_to_model_input(images[:n], kind, cfg.model.bits,
                                  tuple(cfg.model.input_shape), args.seed)
        labels = None if labels_np is None else torch.from_numpy(labels_np[:n])
        if labels is not None:
            _check_labels(labels, model.num_classes, args.npz)
        names = None
        source = args.npz.stem
    probs = predict_proba(model, x, batch_size=args.batch_size, n_samples=args.samples,
                          seed=args.seed)
    pred = probs.argmax(1)
    out = args.out or args.run_dir / f"predictions_{source}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"probs": probs.numpy(), "pred": pred.numpy()}
    if labels is not None:
        result["labels"] = labels.numpy()
    if out.suffix == ".json":
        atomic_write_json(out, {k: v.tolist() for k, v in result.items()})
    else:
        np.savez(out, **result)
    summary = {"n": int(len(pred)), "source": source}
    if labels is not None:
        s = classification_summary(probs, labels, names)
        summary.update(error=s["error"], accuracy=s["accuracy"])
    print(json.dumps(summary, indent=1))
    print(f"written: {out}")
    return 0
