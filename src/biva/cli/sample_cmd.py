"""``biva sample``: a PNG grid of prior samples, one row per temperature."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import save_grid
from ..evaluation.generation import samples_at_temperatures
from ..evaluation.loading import load_trained
from .common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    parse_temperatures,
    positive_int,
    setup_runtime,
)


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
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: run_dir/figures)")
    p.add_argument("--per-class", type=int, default=10,
                   help="semi-supervised runs: samples a class in figures/samples_by_class.png "
                   "(one row per class)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def write_samples(model, kind: str, out: Path, n: int, temperatures: list[float], seed: int,
                  mode: str = "mean", layer_temperatures: list[float] | None = None) -> Path:
    """Write a grid: row block t holds n samples at temperatures[t], same noise for each.

    With ``layer_temperatures`` (L values, layer 1 first) row t uses t * layer_temperatures.
    """
    temps: list = list(temperatures)
    if layer_temperatures is not None:
        if len(layer_temperatures) != model.n_layers:
            raise ValueError(f"--layer-temperatures: expected {model.n_layers} values (one per "
                             f"stochastic layer), found {len(layer_temperatures)}")
        temps = [[t * lt for lt in layer_temperatures] for t in temperatures]
    images = samples_at_temperatures(model, n, temps, seed=seed, mode=mode).flatten(0, 1)
    nrow = n if len(temps) > 1 else None
    return save_grid(images, out, kind=kind, nrow=nrow)


def _parse_layer_temperatures(text: str) -> list[float]:
    try:
        return parse_temperatures(text)
    except ValueError as err:  # same rules, but name the option the user typed
        raise ValueError(str(err).replace("--temperature", "--layer-temperatures")) from None


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    model, cfg, _ = load_trained(args.run_dir, args.checkpoint, device)
    kind = "binary" if cfg.model.likelihood == "bernoulli" else "8bit"
    temps = parse_temperatures(args.temperature)
    layer_temps = (_parse_layer_temperatures(args.layer_temperatures)
                   if args.layer_temperatures else None)
    out = args.out or args.run_dir / "figures" / "samples.png"
    path = write_samples(model, kind, out, args.num, temps, args.seed, args.mode, layer_temps)
    print(f"written: {path}")
    if hasattr(model, "class_grid"):  # semi-supervised run: one row per class
        from ..evaluation.classification import write_class_samples

        t = [temps[0] * lt for lt in layer_temps] if layer_temps else temps[0]
        path = write_class_samples(model, kind, out.with_name(out.stem + "_by_class.png"),
                                   args.per_class, t, args.seed, args.mode)
        print(f"written: {path}")
    return 0
