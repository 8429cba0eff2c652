"""``biva ablation``: the paper's variants (Table 1, Figure 2) trained from one config."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_renamed_option,
    nonnegative_int,
    parse_int_list,
    parse_names,
    positive_int,
)
from biva.experiments.ablation import (
    ABLATION_VARIANTS,
    PAPER_VARIANTS,
    AblationSettings,
    StepCostPlan,
    plan_runs,
    train_ablation,
    write_step_costs,
    write_summary,
)


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
    p.add_argument("--samples", type=positive_int, default=100, metavar="K",
                   help="importance samples K of the test L_K")
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
    p.add_argument("--step-costs", action="store_true",
                   help="measure the cost of a step of each variant instead of training: "
                   "every variant timed in turns, one process per core (--jobs), at the same "
                   "time, into OUT/step_costs.json; the table's equal-compute column comes from "
                   "it. Run it on idle cores")
    p.add_argument("--step-cost-turns", type=positive_int, default=3, metavar="N",
                   help="turns of --step-cost-steps timed updates per variant and process")
    p.add_argument("--step-cost-steps", type=positive_int, default=10, metavar="N",
                   help="timed updates of a variant in one turn")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_renamed_option(p, "--k", "--samples")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> AblationSettings:
    """The command's options as :class:`~biva.experiments.ablation.AblationSettings`."""
    return AblationSettings(
        out=args.out, steps=args.steps, variants=parse_names(args.variants),
        seeds=parse_int_list(args.seeds, "--seeds"), config=args.config, data=args.data,
        split_seed=args.split_seed, max_cpu_minutes=args.max_cpu_minutes,
        n_samples=args.samples, eval_examples=args.eval_examples, overrides=args.overrides,
        data_root=args.data_root, device=args.device, threads=args.threads)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.step_costs:
        plan = StepCostPlan(steps=args.step_cost_steps, turns=args.step_cost_turns,
                            workers=args.jobs)
        print(f"written: {write_step_costs(settings, plan)}")
        if not any(run.result_path.is_file() for run in
                   plan_runs(settings.out, settings.variants, settings.seeds)):
            return 0          # nothing trained yet: the table comes with the first results
    elif not args.summary_only:
        workers = [["-m", "biva.cli.main", *_worker_argv(args.argv)]] * (args.jobs - 1)
        train_ablation(settings, workers=workers)
        if args.worker:
            return 0
    runs = plan_runs(settings.out, settings.variants, settings.seeds)
    for path in write_summary(settings.out, runs, settings.variants):
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
