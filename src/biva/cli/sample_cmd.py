"""``biva sample``: a PNG grid of prior samples, one row per temperature."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    parse_temperatures,
    positive_int,
    setup_runtime,
)
from biva.runs.sample import SampleSettings, sample_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample images from a trained run",
        description="Draw images from the prior N(0, I) of the EMA model. Several "
        "temperatures (e.g. 1.0,0.8,0.6) give one row each, with the same latent noise.",
        formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("-n", "--num", type=positive_int, default=64,
                   help="samples (per temperature)")
    p.add_argument("--temperature", default="1.0", help="one value or a comma-separated list")
    p.add_argument("--layer-temperatures", default=None, metavar="T1,...,TL",
                   help="one temperature per stochastic layer (layer 1 first), e.g. "
                   "1,1,1,0.8,0.8,0.8; each --temperature value scales this list")
    p.add_argument("--mode", choices=["mean", "sample"], default="mean",
                   help="show the mean of p(x|z) or a draw from it")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG path (default: RUN_DIR/figures/samples.png, or samples_2.png, ... "
                   "when that is taken: an earlier figure is never replaced)")
    p.add_argument("--per-class", type=int, default=10,
                   help="semi-supervised runs: samples a class in figures/samples_by_class.png "
                   "(one row per class)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _parse_layer_temperatures(text: str) -> list[float]:
    try:
        return parse_temperatures(text)
    except ValueError as err:  # same rules, but name the option the user typed
        raise ValueError(str(err).replace("--temperature", "--layer-temperatures")) from None


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    layer = (_parse_layer_temperatures(args.layer_temperatures) if args.layer_temperatures
             else None)
    settings = SampleSettings(
        n=args.num, temperatures=tuple(parse_temperatures(args.temperature)),
        layer_temperatures=tuple(layer) if layer else None, mode=args.mode, seed=args.seed,
        checkpoint=args.checkpoint, out=args.out, per_class=args.per_class)
    for path in sample_run(args.run_dir, settings, device=device):
        print(f"written: {path}")
    return 0
