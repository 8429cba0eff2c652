"""``biva sample``: a PNG grid of prior samples, one row per temperature."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..evaluation import save_grid
from ..evaluation.loading import load_trained
from .common import add_runtime_options, parse_temperatures, setup_runtime


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample images from a trained run",
        description="Draw images from the prior N(0, I) of the EMA model. Several "
        "temperatures (e.g. 1.0,0.8,0.6) give one row each, with the same latent noise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("-n", "--num", type=int, default=64, help="samples (per temperature)")
    p.add_argument("--temperature", default="1.0", help="one value or a comma-separated list")
    p.add_argument("--mode", choices=["mean", "sample"], default="mean",
                   help="show the mean of p(x|z) or a draw from it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: run_dir/figures)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def write_samples(model, kind: str, out: Path, n: int, temperatures: list[float], seed: int,
                  mode: str = "mean") -> Path:
    """Write a grid: row block t holds n samples at temperatures[t], same noise for each."""
    rows = []
    for t in temperatures:
        gen = torch.Generator(device=model.out_conv.v.device).manual_seed(seed)
        rows.append(model.sample(n, t, generator=gen, mode=mode))
    images = torch.cat(rows)
    nrow = n if len(temperatures) > 1 else None
    return save_grid(images, out, kind=kind, nrow=nrow)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    model, cfg, _ = load_trained(args.run_dir, args.checkpoint, device)
    kind = "binary" if cfg.model.likelihood == "bernoulli" else "8bit"
    temps = parse_temperatures(args.temperature)
    out = args.out or args.run_dir / "figures" / "samples.png"
    print(f"written: {write_samples(model, kind, out, args.num, temps, args.seed, args.mode)}")
    return 0
