"""``biva ood``: anomaly detection with L^{>k} (Table 5 / Figure 4) for a trained run."""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import DatasetSplits, ImageSplit, load_dataset
from ..evaluation import evaluation_split
from ..evaluation.loading import load_trained
from ..evaluation.ood import (
    METRIC_CONVENTION,
    OOD_PAIRS,
    ood_metrics,
    ood_table,
    plot_ood_histograms,
    score_split,
    table_markdown,
)
from ..training import load_run_data
from ..utils.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from .common import add_runtime_options, parse_int_list, setup_runtime

_PATH_DATASETS = ("folder", "npz")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    # "(default: None)" says nothing; those options describe their default in the help text.
    def _get_help_string(self, action):
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ood", help="anomaly detection with the L^{>k} bound",
        description="Score an in-distribution test set and OOD sets with L^{>k} (eq. 2) for "
        "several k; write the mean per dataset and k (table.md/json), AUROC/AUPRC/FPR@95%TPR "
        "with OOD as the positive class and -L^{>k} as the anomaly score (metrics.json), "
        "histograms (histograms.png) and per-example scores (scores.npz/csv).",
        formatter_class=_Formatter)
    p.add_argument("run_dir", type=Path, help="a biva run directory")
    p.add_argument("--pair", choices=sorted(OOD_PAIRS), default=None,
                   help="a named experiment: sets --in-data and --ood-data "
                   "(fashion_vs_mnist is Table 5's binary pair)")
    p.add_argument("--in-data", default=None,
                   help="in-distribution dataset (default: the run's own dataset)")
    p.add_argument("--in-path", default=None,
                   help="file or folder of --in-data when it is folder or npz")
    p.add_argument("--ood-data", nargs="+", default=None, metavar="NAME",
                   help="out-of-distribution dataset(s)")
    p.add_argument("--ood-path", nargs="+", default=[], metavar="PATH",
                   help="files/folders of the folder/npz entries of --ood-data, in order")
    p.add_argument("--ood-split", choices=["test", "all"], default="test",
                   help="which part of each OOD dataset to score")
    p.add_argument("--k", default=None,
                   help="comma-separated k of L^{>k}, e.g. 0,2,4 (default: 0..L-1)")
    p.add_argument("--n-samples", type=int, default=1,
                   help="importance samples per example (1: the plain L^{>k} estimator)")
    p.add_argument("--n-examples", type=int, default=0, help="first N of each set (0: all)")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-batch", type=int, default=4096,
                   help="rows (samples x examples) of one batched pass: bounds memory")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the latent samples and binarization (default: the run's)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/ood)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    add_runtime_options(p)
    p.set_defaults(func=run)


def parse_ks(text: str | None, n_layers: int) -> list[int]:
    """"0,2,4" -> [0, 2, 4], each in 0..L-1; None -> all of 0..L-1."""
    if text is None:
        return list(range(n_layers))
    ks = parse_int_list(text, "--k")
    bad = [k for k in ks if not 0 <= k < n_layers]
    if not ks or bad:
        raise ValueError(f"--k: expected values in 0..{n_layers - 1} (the model has L = "
                         f"{n_layers} layers), found {text!r}")
    return sorted(set(ks))


def _label(name: str, path: str | None, taken: set[str]) -> str:
    """A name usable as a CSV value and an npz key ({label}_k{k}); unique among ``taken``."""
    base = Path(path).stem if name in _PATH_DATASETS and path else name
    base = re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "data"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    taken.add(label)
    return label


def load_like_run(name: str, path: str | None, data: DatasetSplits, *, root: str | None,
                  seed: int) -> DatasetSplits:
    """Load ``name`` with the run's preprocessing: binary runs use the same binarization mode
    (already-binary files are used as they are), 8-bit runs stay 8-bit."""
    mode = data.binarization if data.kind == "binary" else None
    try:
        other = load_dataset(name, root, binarization=mode, seed=seed, path=path)
    except ValueError as err:
        if data.kind != "binary" or "binarization=" not in str(err):
            raise
        other = load_dataset(name, root, binarization=None, seed=seed, path=path)
    if other.kind != data.kind:
        raise ValueError(f"{name}: loads as {other.kind!r} images but the model was trained "
                         f"on {data.kind!r} images ({data.name}); they cannot be scored by one "
                         "likelihood")
    return other


def _eval_images(data: DatasetSplits, which: str, seed: int) -> ImageSplit:
    if which == "test":
        return evaluation_split(data, "test", seed)
    parts = [evaluation_split(data, s, seed) for s in ("train", "valid", "test")]
    return ImageSplit(torch.cat([p.images for p in parts]))


def _check_shape(name: str, split: ImageSplit, shape: tuple[int, ...], run_data: str) -> None:
    got = tuple(int(s) for s in split.images.shape[1:])
    if got != tuple(shape):
        raise ValueError(f"{name}: images of shape {got} (C, H, W) cannot be scored by a model "
                         f"of input shape {tuple(shape)} (trained on {run_data})")


def _resolve_sets(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    in_name, ood = args.in_data, args.ood_data
    if args.pair is not None:
        pair_in, pair_ood = OOD_PAIRS[args.pair]
        in_name = in_name or pair_in
        ood = ood or list(pair_ood)
    if not ood:
        raise ValueError("name the OOD dataset(s) with --ood-data NAME [NAME ...] or --pair "
                         f"({', '.join(sorted(OOD_PAIRS))})")
    n_path = sum(name in _PATH_DATASETS for name in ood)
    if len(args.ood_path) != n_path:
        raise ValueError(f"--ood-path: expected one path per folder/npz entry of --ood-data "
                         f"({n_path}), found {len(args.ood_path)}")
    return in_name, list(ood)


def _write_scores(out: Path, scores: dict[str, dict[int, torch.Tensor]], in_label: str,
                  ks: list[int]) -> None:
    arrays = {f"{name}_k{k}": per_k[k].double().numpy() for name, per_k in scores.items()
              for k in ks}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "scores.npz", buf.getvalue())
    with atomic_open(out / "scores.csv", "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["dataset", "role", "index"] + [f"L_gt{k}_nats" for k in ks])
        for name, per_k in scores.items():
            role = "in" if name == in_label else "ood"
            cols = [per_k[k].tolist() for k in ks]
            for i, row in enumerate(zip(*cols, strict=True)):
                w.writerow([name, role, i] + [repr(float(v)) for v in row])


def run_ood(args: argparse.Namespace, device: torch.device) -> dict:
    """Score every set, write the files; returns the metrics dict (also in metrics.json)."""
    in_name, ood_names = _resolve_sets(args)
    model, cfg, state = load_trained(args.run_dir, args.checkpoint, device)
    if args.data_root:
        cfg.data.root = args.data_root
    seed = cfg.train.seed if args.seed is None else args.seed
    ks = parse_ks(args.k, model.n_layers)
    shape = tuple(cfg.model.input_shape)
    run_data = load_run_data(cfg)
    if in_name is not None and in_name != cfg.data.name:
        print(f"note: the run was trained on {cfg.data.name}; scoring {in_name} as the "
              "in-distribution set", file=sys.stderr)
    in_data = run_data if in_name in (None, cfg.data.name) and not args.in_path else \
        load_like_run(in_name or cfg.data.name, args.in_path, run_data, root=cfg.data.root,
                      seed=seed)
    taken: set[str] = set()
    in_label = _label(in_data.name, args.in_path or cfg.data.path, taken)
    sets = [(in_label, in_data.name, evaluation_split(in_data, "test", seed))]
    paths = iter(args.ood_path)
    for name in ood_names:
        path = next(paths) if name in _PATH_DATASETS else None
        data = load_like_run(name, path, run_data, root=cfg.data.root, seed=seed)
        sets.append((_label(name, path, taken), name, _eval_images(data, args.ood_split, seed)))
    for label, name, split in sets:
        _check_shape(name if label == name else f"{name} ({label})", split, shape,
                     cfg.data.name)

    scores: dict[str, dict[int, torch.Tensor]] = {}
    t0 = time.perf_counter()
    for label, _name, split in sets:
        torch.manual_seed(seed)   # each set's scores do not depend on which sets came before
        t = time.perf_counter()
        scores[label] = score_split(model, split, run_data.kind, cfg.model.bits, ks,
                                    n_samples=args.n_samples, batch_size=args.batch_size,
                                    max_batch=args.max_batch, n_examples=args.n_examples)
        n = scores[label][ks[0]].numel()
        print(f"scored {label}: {n} examples x {len(ks)} k in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)

    out = args.out or args.run_dir / "ood"
    out.mkdir(parents=True, exist_ok=True)
    dims = int(np.prod(shape))
    table = ood_table(scores, in_name=in_label, kind=run_data.kind, dims=dims,
                      n_samples=args.n_samples)
    meta = {"run_dir": str(args.run_dir), "checkpoint": state["checkpoint"],
            "step": state.get("step"), "seed": seed, "ood_split": args.ood_split}
    table.update(meta)
    atomic_write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", table_markdown(table))
    metrics = {"convention": METRIC_CONVENTION, "in_distribution": in_label, "ks": ks,
               "n_samples": args.n_samples, **meta,
               "metrics": {label: {str(k): ood_metrics(scores[in_label][k], scores[label][k])
                                   for k in ks}
                           for label, _n, _s in sets[1:]},
               "seconds": time.perf_counter() - t0}
    atomic_write_json(out / "metrics.json", metrics)
    plot_ood_histograms(scores, out / "histograms.png", in_name=in_label, kind=run_data.kind,
                        dims=dims, ks=sorted(ks, reverse=True))
    _write_scores(out, scores, in_label, ks)
    return {"out": out, "table": table, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    res = run_ood(args, device)
    print(table_markdown(res["table"]), end="")
    print("\nAUROC / AUPRC / FPR@95%TPR (OOD = positive, anomaly score = -L^{>k}):")
    for label, per_k in res["metrics"]["metrics"].items():
        for k, m in per_k.items():
            print(f"  {label:>16} k={k:>2}: {m['auroc']:.3f} / {m['auprc']:.3f} / "
                  f"{m['fpr_at_95_tpr']:.3f}")
    print(f"written: {res['out']}/{{table.md,table.json,metrics.json,histograms.png,"
          "scores.npz,scores.csv}")
    return 0
