"""``biva predict``: class probabilities q(y|x) of a semi-supervised run for new data."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_renamed_option,
    add_run_dir_argument,
    add_runtime_options,
    images_hint,
    nonnegative_int,
    positive_int,
    print_summary,
    setup_runtime,
)
from biva.data import DATASET_NAMES
from biva.runs.predict import PredictSettings, predict_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="class probabilities from a semi-supervised run",
        description="Classify images with the EMA classifier q(y|x) of a semi-supervised run "
        "(data.labels_per_class > 0): a split of a dataset (--data NAME), an .npz file of "
        "images (--npz FILE, array 'images' or 'x', optional 'labels') or a folder of image "
        "files (--images PATH, as biva detect and biva train --data read one). Writes an .npz "
        "with 'probs' (N, C), 'pred' (N,), 'labels' when known and 'files' for --images; "
        "prints the error if labels are known.", formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a semi-supervised biva run directory")
    # Not required by argparse: a missing source gets a message that names the fix (run).
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", choices=DATASET_NAMES, metavar="NAME",
                     help=f"a dataset ({', '.join(DATASET_NAMES)})")
    src.add_argument("--npz", type=Path, metavar="FILE", help="an .npz file of images")
    src.add_argument("--images", type=Path, metavar="PATH",
                     help="a folder of image files (sorted, recursively), or one image file")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                   help="split of --data")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--n-examples", type=nonnegative_int, default=0,
                   help="first N examples (0: all)")
    p.add_argument("--classifier-draws", type=positive_int, default=1,
                   help="z^BU draws averaged per prediction")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="examples per batch")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the z^BU draws (and of binarizing grey-level --npz or --images "
                   "images)")
    p.add_argument("--out", type=Path, default=None,
                   help="output .npz or .json (default: RUN_DIR/predictions_<source>.npz)")
    add_runtime_options(p)
    add_renamed_option(p, "--samples", "--classifier-draws")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data is None and args.npz is None and args.images is None:
        hint = images_hint(args)
        raise ValueError("what to classify is missing: pass --data NAME, --npz FILE or "
                         "--images PATH" + (f" ({hint})" if hint else ""))
    device = setup_runtime(args)
    settings = PredictSettings(
        data=args.data, npz=args.npz, images=args.images, split=args.split,
        data_root=args.data_root,
        n_examples=args.n_examples, classifier_draws=args.classifier_draws,
        checkpoint=args.checkpoint, batch_size=args.batch_size, seed=args.seed, out=args.out)
    summary, out = predict_run(args.run_dir, settings, device=device)
    print_summary(summary)
    print(f"written: {out}")
    return 0
