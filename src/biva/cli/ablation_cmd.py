"""``biva ablation``: the paper's variants (Table 1, Figure 2) trained from one config."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..experiments.ablation import (
    ABLATION_VARIANTS,
    PAPER_VARIANTS,
    AblationBudget,
    ablation_model,
    ablation_train,
    plan_runs,
    run_ablation,
    write_summary,
)
from .common import HelpFormatter, nonnegative_int, parse_int_list, parse_names, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablation", help="train and compare VAE, LVAE, LVAE+, LVAE+ (2L-1), BIVA, VDVAE and NVAE",
        description="The paper's ablation (section 4.1) from one config: every variant for "
        "every seed, trained to the same budget in OUT/<variant>/seed<S> (resumable: run the "
        "same command again), its best-validation checkpoint evaluated on the test split; "
        "then OUT/table.json, table.md (Table 1), kl_per_layer.json/.png (Figure 2) and "
        "curves.png. Run the command in several shells (or --jobs N) to train runs side by "
        "side. Variants: " + "; ".join(f"{k}: {v}" for k, v in ABLATION_VARIANTS.items()),
        formatter_class=HelpFormatter)
    p.add_argument("--config", default=None,
                   help="shipped config or file (default with --data: the CPU config for "
                   "the image size)")
    p.add_argument("--data", type=Path, default=None, metavar="PATH",
                   help="your own images (folder or .npz), as in biva train")
    p.add_argument("--out", type=Path, required=True, help="the ablation's folder")
    p.add_argument("--variants", default=",".join(PAPER_VARIANTS),
                   help="comma-separated variants (default: the paper's five; add vdvae, "
                   "nvae for the top-down families)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="data.split_seed of every run: one test set for all seeds")
    p.add_argument("--steps", type=positive_int, required=True,
                   help="training steps of every run (equal steps)")
    p.add_argument("--max-cpu-minutes", type=float, default=0.0,
                   help="also stop a run after this much CPU time (0: steps only)")
    p.add_argument("--k", type=positive_int, default=100,
                   help="importance samples of the test L_k")
    p.add_argument("--eval-examples", type=nonnegative_int, default=0,
                   help="first N test examples (0: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every run (repeatable)")
    p.add_argument("--data-root", default=None, help="shortcut for --set data.root=DIR")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="CPU threads of each worker (0: torch's default)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="worker processes training runs side by side")
    p.add_argument("--summary-only", action="store_true",
                   help="write the tables and figures from the finished runs, train nothing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if args.data_root:
        out.append(f"data.root={args.data_root}")
    return [*out, f"train.device={args.device}", f"train.threads={args.threads}",
            "train.progress=false", f"data.split_seed={args.split_seed}"]


def config_maker(args: argparse.Namespace, budget: AblationBudget):
    """make_config(variant, seed) -> (RunConfig, its data or None to load them)."""
    from ..training.config import load_run_config
    from ..training.own_data import config_for_data

    base = [*_overrides(args), *budget.overrides()]

    def make(variant: str, seed: int):
        data = None
        if args.data is not None:
            cfg, data, lines = config_for_data(args.data, args.config,
                                               [*base, f"train.seed={seed}"])
            print("\n".join(lines))
        else:
            cfg = load_run_config(args.config or "digits", [*base, f"train.seed={seed}"])
            cfg.name = Path(args.config or "digits").stem
        cfg.model = ablation_model(cfg.model, variant)
        cfg.train = ablation_train(cfg.train, variant)
        cfg.name = f"{cfg.name}-{variant}-seed{seed}"
        cfg.validate()
        return cfg, data

    return make


def run(args: argparse.Namespace) -> int:
    import torch

    variants, seeds = parse_names(args.variants), parse_int_list(args.seeds, "--seeds")
    runs = plan_runs(args.out, variants, seeds)
    budget = AblationBudget(args.steps, args.max_cpu_minutes, args.k, args.eval_examples)
    if not args.summary_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        workers = [subprocess.Popen([sys.executable, "-m", "biva.cli.main",
                                     *_worker_argv(args.argv)])
                   for _ in range(args.jobs - 1)]
        failed = None
        try:
            run_ablation(runs, config_maker(args, budget), budget, device=args.device)
        except Exception as err:  # let the workers finish their runs before reporting it
            failed = err
        codes = [w.wait() for w in workers]
        if failed is not None:
            raise failed
        if any(codes):
            raise RuntimeError(f"{sum(c != 0 for c in codes)} ablation worker(s) failed "
                               f"(exit codes {codes}); run the same command again to resume")
        if args.worker:
            return 0
    for path in write_summary(args.out, runs, variants):
        print(f"written: {path}")
    return 0


def _worker_argv(argv: list[str]) -> list[str]:
    """This command line with --jobs 1: a worker takes the runs no other process holds."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--jobs":
            skip = i + 1 < len(argv)
            continue
        if a.startswith("--jobs="):
            continue
        out.append(a)
    return [*out, "--jobs", "1", "--worker"]
