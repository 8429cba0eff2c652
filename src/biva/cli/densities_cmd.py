"""``biva densities``: the complex 2-D densities experiment of appendix D (Figs. 7 and 8)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from biva.cli.common import HelpFormatter, add_renamed_option, parse_int_list, parse_names
from biva.experiments.densities import DensityConfig, run_experiment


def add_parser(sub) -> None:
    p = sub.add_parser(
        "densities", help="fit q(z_L) to the 2-D potentials U1..U4 (appendix D)",
        description="Train VAE/LVAE/BIVA (5 stochastic layers of 2 units, residual MLPs of 128 "
        "units) so that the aggregate posterior q(z_L) of x ~ N(0, I) matches exp(-U)/Z, for "
        "every model x potential x seed in parallel processes; writes OUT/results.json (KL per "
        "run, median and quartiles per model and potential), OUT/densities.png (Fig. 8), "
        "OUT/kl_boxplot.png (Fig. 7) and OUT/runs/ (finished runs are reused on a rerun).",
        formatter_class=HelpFormatter)
    d = DensityConfig()
    p.add_argument("--variants", default="vae,lvae,biva", help="comma-separated variants")
    p.add_argument("--potentials", default="1,2,3,4", help="comma-separated of 1,2,3,4")
    p.add_argument("--seeds", type=int, default=10, help="runs per model and potential")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"training iterations (default {d.iterations}; --quick: 300)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help=f"posterior samples for the KL (default {d.eval_samples}; --quick: 1e4)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="samples of the target density per step")
    p.add_argument("--x-std", type=float, default=d.x_std, help="std of p(x | z)")
    p.add_argument("--free-bits", type=float, default=d.free_bits,
                   help="nats per latent group and example")
    p.add_argument("--extent", type=float, default=d.extent,
                   help="the KL grid covers (-extent, extent)^2 (100 x 100 bins)")
    p.add_argument("--wall", type=float, default=d.wall,
                   help="width of the soft wall confining p(z_L) to the KL's box (0: none)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 300 iterations, 10^4 evaluation samples")
    p.add_argument("--jobs", type=int, default=2,
                   help="parallel processes, one thread each (1: run in this process)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where every run trains (the workers share it)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    add_renamed_option(p, "--models", "--variants")
    add_renamed_option(p, "--workers", "--jobs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    cfg = DensityConfig().quick() if args.quick else DensityConfig()
    cfg = replace(cfg, batch_size=args.batch_size, x_std=args.x_std, free_bits=args.free_bits,
                  extent=args.extent, wall=args.wall)
    if args.iterations is not None:
        cfg = replace(cfg, iterations=args.iterations)
    if args.eval_samples is not None:
        cfg = replace(cfg, eval_samples=args.eval_samples)
    if cfg.wall < 0 or cfg.extent <= 0:
        raise ValueError(f"--wall must be >= 0 and --extent > 0, got {cfg.wall} and {cfg.extent}")
    if cfg.iterations < 1 or cfg.eval_samples < 1 or args.seeds < 1 or args.jobs < 1:
        raise ValueError("--iterations, --eval-samples, --seeds and --jobs must be >= 1")
    models = parse_names(args.variants)
    potentials = parse_int_list(args.potentials, "--potentials")
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    if args.jobs == 1:
        torch.set_num_threads(1)  # the same one-thread setting as the pool's workers
    device = torch.device(args.device)  # a malformed name fails here, naming itself
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch has no CUDA device")
    results = run_experiment(models, potentials, seeds, cfg, args.out, workers=args.jobs,
                             device=str(device))
    print(f"\nKL(q(z_L) || p(z_L)) in nats over {len(seeds)} seed(s): median [q1, q3]")
    print("model    " + "".join(f"{'U' + str(p):>24}" for p in potentials))
    for m in models:
        cells = [results["summary"][m][f"U{p}"] for p in potentials]
        print(f"{m:9}" + "".join(f"{c['median']:>9.3f} [{c['q1']:.3f}, {c['q3']:.3f}]"
                                 .rjust(24) for c in cells))
    for name in ("results.json", "densities.png", "kl_boxplot.png"):
        print(f"written: {args.out / name}")
    return 0
