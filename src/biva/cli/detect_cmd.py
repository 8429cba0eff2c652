"""``biva detect``: flag anomalous images in a folder with a run's or a shipped detector."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    positive_int,
    setup_runtime,
)
from biva.ood.detect import detect_folder


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect", help="flag anomalous images in a folder: +1 in-distribution, -1 flagged",
        description="Score every image in a folder (or one file) with the run's anomaly "
        "detector, RUN_DIR/ood/detector.json (a shipped model brings its own, which `biva ood` "
        "never replaces). Without one, "
        "the default detector is fitted on the run's validation images alone (the density of "
        "[L_K, LLR^{>k}], no anomaly examples) and saved there first. Writes a CSV: file, "
        "anomaly score (higher = more anomalous), +1 / -1.", formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("images", type=Path, help="a folder of images (recursive) or one image file")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV path (default: RUN_DIR/ood/detect_<folder name>_<digest of its "
                   "path>.csv)")
    p.add_argument("--n-valid", type=positive_int, default=1000,
                   help="validation images to fit a detector on when the run has none")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--seed", type=int, default=0, help="seed of binary images' draw")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    d = detect_folder(args.run_dir, args.images, out=args.out, checkpoint=args.checkpoint,
                      n_valid=args.n_valid, seed=args.seed, device=device)
    print(f"{d.n_flagged} of {d.n_images} images flagged ({100 * d.n_flagged / d.n_images:.1f}%;"
          f" the detector flags {100 * d.in_flag_rate:.0f}% of in-distribution images by "
          f"design): {d.out}")
    return 0
