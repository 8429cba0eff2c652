"""``biva sample``: a PNG grid of prior samples, one row per temperature; with ``--from
IMAGES``, what each layer holds (reconstructions keeping the top layers, interpolations)."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    parse_int_list,
    parse_temperatures,
    positive_int,
    setup_runtime,
)
from biva.runs.sample import LatentViewSettings, SampleSettings, latent_views_run, sample_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample images from a trained run",
        description="Draw images from the prior N(0, I) of the EMA model. Several "
        "temperatures (e.g. 1.0,0.8,0.6) give one row each, with the same latent noise.",
        formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("-n", "--num", type=positive_int, default=None,
                   help="samples per temperature (default 64); with --from or --from-split, "
                   "images (default 8)")
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
    v = p.add_argument_group(
        "what each layer holds", "with --from or --from-split: a folder of figures (default "
        "RUN_DIR/figures/latents): keep.png, one row an image, then the image decoded from "
        "its top K layers (the rest drawn from the prior at the first --temperature) for each "
        "K of --keep; interpolate_layerI.png, pairs of images interpolated at layer I; "
        "latent_views.json. -n is the number of images")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--from", dest="from_images", type=Path, default=None, metavar="IMAGES",
                     help="a folder of image files (or one file), read as `biva train --data` "
                     "reads a folder")
    src.add_argument("--from-split", choices=["valid", "test"], default=None,
                     help="the first images of a split of the run's own data set")
    v.add_argument("--keep", default=None, metavar="K,...",
                   help="top layers kept from q(z|x), e.g. 3,2,1 (default L, L-1, ..., 0)")
    v.add_argument("--interpolate-layers", default=None, metavar="I,...",
                   help="layers to interpolate at (default 1 and L)")
    v.add_argument("--steps", type=positive_int, default=8, help="points of an interpolation")
    v.add_argument("--interpolate-others", choices=["a", "prior"], default="a",
                   help="the layers not interpolated: the first image's posterior means (a), "
                   "or the conditional prior means given the layers above (prior)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _parse_layer_temperatures(text: str) -> list[float]:
    try:
        return parse_temperatures(text)
    except ValueError as err:  # same rules, but name the option the user typed
        raise ValueError(str(err).replace("--temperature", "--layer-temperatures")) from None


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    if args.from_images is not None or args.from_split is not None:
        views = LatentViewSettings(
            images=args.from_images, split=args.from_split, n=args.num or 8,
            keep=tuple(parse_int_list(args.keep, "--keep")) if args.keep else None,
            layers=(tuple(parse_int_list(args.interpolate_layers, "--interpolate-layers"))
                    if args.interpolate_layers else None), steps=args.steps,
            others=args.interpolate_others,
            temperature=parse_temperatures(args.temperature)[0], seed=args.seed,
            checkpoint=args.checkpoint, out=args.out)
        for path in latent_views_run(args.run_dir, views, device=device):
            print(f"written: {path}")
        return 0
    layer = (_parse_layer_temperatures(args.layer_temperatures) if args.layer_temperatures
             else None)
    settings = SampleSettings(
        n=args.num or 64, temperatures=tuple(parse_temperatures(args.temperature)),
        layer_temperatures=tuple(layer) if layer else None, mode=args.mode, seed=args.seed,
        checkpoint=args.checkpoint, out=args.out, per_class=args.per_class)
    for path in sample_run(args.run_dir, settings, device=device):
        print(f"written: {path}")
    return 0
