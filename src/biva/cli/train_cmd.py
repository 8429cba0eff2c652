"""``biva train``: train a model from a config, or resume a run."""

from __future__ import annotations

import argparse

from biva.cli.common import HelpFormatter
from biva.cli.train_options import add_train_options, train_request
from biva.runs.train import train_run, training_summary


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (or resume a run)",
        description="Train a model from a shipped config name or a YAML/JSON file. Any field "
        "can be overridden with --set section.field=value, e.g. --set train.steps=2000 "
        "--set model.filters=[32]. Resume an interrupted run with --resume RUN_DIR; a finished "
        "one trains further with --resume RUN_DIR --set train.max_cpu_minutes=120 (only "
        "train.steps, train.max_minutes and train.max_cpu_minutes may change on resume).",
        formatter_class=HelpFormatter)
    add_train_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trainer, run_dir = train_run(train_request(args))
    if trainer.rank == 0:
        print(training_summary(trainer, run_dir))
    return 0
