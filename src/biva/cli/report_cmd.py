"""``biva report``: one self-contained HTML page about a run, plus diagnostics.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    parse_temperatures,
    setup_runtime,
)
from biva.runs.report import write_report


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="an HTML report of a run (curves, KL heatmap, samples, diagnostics)",
        description="Write RUN_DIR/report.html, one page that opens offline (images embedded): "
        "config, metrics, training curves, KL per latent group and epoch, active units, "
        "samples at several temperatures, generations from a fixed z_>i, reconstructions, an "
        "interpolation in the top latent. Also writes RUN_DIR/diagnostics.json.",
        formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("--out", type=Path, default=None, help="HTML path (default: in run dir)")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--temperature", default="1.0,0.85,0.7,0.5",
                   help="sample rows: comma-separated temperatures (same noise)")
    p.add_argument("--n-examples", type=int, default=1000,
                   help="validation examples for KL, log p(x|z) and active units (0: all)")
    p.add_argument("--ess-k", type=int, default=100,
                   help="importance samples for the effective sample size (1: skip)")
    p.add_argument("--images", type=int, default=8, help="test images per image grid")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the latent draws of the figures")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    out = write_report(args.run_dir, args.out, checkpoint=args.checkpoint, device=device,
                       data_root=args.data_root, n_examples=args.n_examples, ess_k=args.ess_k,
                       n_images=args.images, temperatures=parse_temperatures(args.temperature),
                       seed=args.seed, verbose=not args.no_progress)
    print(f"written: {out}")
    print(f"written: {args.run_dir / 'diagnostics.json'}")
    return 0
