"""The ``biva`` command: train, evaluate, sample, run (the whole pipeline), download, configs."""

from __future__ import annotations

import argparse
import sys

from . import (
    ablation_cmd,
    configs_cmd,
    densities_cmd,
    download_cmd,
    evaluate_cmd,
    ood_cmd,
    predict_cmd,
    report_cmd,
    run_cmd,
    sample_cmd,
    text_cmd,
    train_cmd,
)

SUBCOMMANDS = [train_cmd, evaluate_cmd, sample_cmd, run_cmd, download_cmd, configs_cmd, ood_cmd,
               report_cmd, predict_cmd, densities_cmd, text_cmd, ablation_cmd]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="biva", description="Deep hierarchical VAEs (BIVA, LVAE, LVAE+, VAE): train, "
        "evaluate importance-weighted bounds, sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. for worker processes
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        # Training stops at a step boundary with a checkpoint (TrainingInterrupted says so);
        # the exit status is the shell's 128 + signal number (130 SIGINT, 143 SIGTERM).
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, MemoryError) as err:
        # Bad input: one clear line naming the problem, no traceback.
        print(f"biva {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
