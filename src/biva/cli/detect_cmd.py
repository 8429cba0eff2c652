"""``biva detect``: flag anomalous images in a folder with a run's or a shipped detector."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from ..evaluation.loading import load_trained
from ..evaluation.ood_detector import OODDetector, detector_for_model
from ..utils.atomic import atomic_open
from .common import HelpFormatter, add_run_dir_argument, add_runtime_options, setup_runtime


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect", help="flag anomalous images in a folder: +1 in-distribution, -1 flagged",
        description="Score every image in a folder (or one file) with the run's anomaly "
        "detector, RUN_DIR/ood/detector.json (a shipped model brings its own). Without one, "
        "the default detector is fitted on the run's validation images alone (the density of "
        "[L_K, LLR^{>k}], no anomaly examples) and saved there first. Writes a CSV: file, "
        "anomaly score (higher = more anomalous), +1 / -1.", formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("images", type=Path, help="a folder of images (recursive) or one image file")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV path (default: RUN_DIR/ood/detect_<folder name>.csv)")
    p.add_argument("--n-valid", type=int, default=1000,
                   help="validation images to fit a detector on when the run has none")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--seed", type=int, default=0, help="seed of binary images' draw")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pretrained import image_files, read_folder

    device = setup_runtime(args)
    path = args.run_dir / "ood" / "detector.json"
    model, cfg, _ = load_trained(args.run_dir, args.checkpoint, device)
    if path.is_file():
        det = OODDetector.load(path, model)
        print(f"detector: {path} ({det.score_}, k = {det.k_})", file=sys.stderr)
    else:
        det = detector_for_model(model, cfg, n_valid=args.n_valid, name=str(args.run_dir))
        det.save(path)
        print(f"detector fitted and saved: {path}", file=sys.stderr)
    files = image_files(args.images)
    images = read_folder(args.images, cfg, seed=args.seed)
    anomaly = det.anomaly_score(images)
    flags = np.where(anomaly > det.threshold_, -1, 1)
    out = args.out or args.run_dir / "ood" / f"detect_{args.images.resolve().name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "anomaly", "flag"])
        for file, a, flag in zip(files, anomaly, flags, strict=True):
            w.writerow([str(file), repr(float(a)), int(flag)])
    n_flagged = int((flags == -1).sum())
    print(f"{n_flagged} of {len(files)} images flagged ({100 * n_flagged / len(files):.1f}%; "
          f"the detector flags {100 * (1 - det.in_tpr):.0f}% of in-distribution images by "
          f"design): {out}")
    return 0
