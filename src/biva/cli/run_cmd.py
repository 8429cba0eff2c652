"""``biva run``: the whole job -- train, evaluate on the test split, write samples and figures."""

from __future__ import annotations

import argparse

from biva.cli.common import (
    HelpFormatter,
    add_renamed_option,
    nonnegative_int,
    positive_int,
    print_summary,
)
from biva.cli.train_options import add_train_options, train_request
from biva.runs.evaluate import EvalSettings
from biva.runs.train import finish_run, train_run, training_summary


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="train, evaluate (L_1, L_K on test), write samples and figures",
        description="The whole job on one config: train (or resume), evaluate L_1 and L_K on "
        "the test split with the best-validation EMA weights, and write sample, "
        "reconstruction and training-curve PNGs into RUN_DIR/figures.",
        formatter_class=HelpFormatter)
    add_train_options(p)
    p.add_argument("--samples", type=positive_int, default=None, metavar="K",
                   help="importance samples K of L_K (default: the config's eval.n_samples)")
    p.add_argument("--eval-examples", type=nonnegative_int, default=None,
                   help="test examples (0: all; default: the config's eval.n_examples)")
    add_renamed_option(p, "--k", "--samples")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trainer, run_dir = train_run(train_request(args))
    if trainer.rank != 0:
        return 0
    print(training_summary(trainer, run_dir))
    settings = EvalSettings(split="test", n_samples=args.samples, n_examples=args.eval_examples)
    res, written = finish_run(run_dir, settings, device=trainer.device,
                              progress=trainer.cfg.train.progress)
    if "classification" in res:
        print(f"test error: {100 * res['classification']['error']:.2f}%")
    summary = {key: v for key, v in res.items() if key.startswith("L_")}
    print_summary({"split": res["split"], "n_examples": res["n_examples"], **summary})
    for path in written:
        print(f"written: {path}")
    return 0
