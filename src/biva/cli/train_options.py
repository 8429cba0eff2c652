"""The options of ``biva train``, shared with ``biva run``, and the request they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.config.run import shipped_configs
from biva.runs.train import TrainRequest


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``biva train`` (shared with ``biva run``)."""
    p.add_argument("--config", default=None,
                   help=f"shipped config ({', '.join(shipped_configs())}) or a file path "
                   "(default: digits; with --data, the CPU config for the image size)")
    p.add_argument("--data", type=Path, default=None, metavar="PATH",
                   help="train on your own images: a folder (flat, one subfolder per class, or "
                   "train/ valid/ test/) or an .npz; shape, likelihood and split are inferred")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="with --data: crop and resize every image to N x N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory (default: runs/<config>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--steps", type=int, default=None, help="shortcut for --set train.steps=N")
    p.add_argument("--seed", type=int, default=None, help="shortcut for --set train.seed=N")
    p.add_argument("--device", default=None, help="shortcut for --set train.device=...")
    p.add_argument("--threads", type=int, default=None, help="shortcut for train.threads")
    p.add_argument("--amp", choices=["auto", "none", "bf16"], default=None,
                   help="bf16 autocast (CPU or CUDA; the bounds stay in float32); auto (the "
                   "config default) picks bf16 where the hardware has native bf16")
    p.add_argument("--data-root", default=None, help="shortcut for --set data.root=DIR")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start a new run from a checkpoint's weights (same architecture; "
                   "fresh optimizer, step 0): shortcut for --set train.init_from=PATH")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop at this step as if interrupted (resume later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """Turn the shortcut flags into --set overrides."""
    out = list(args.overrides)
    for flag, key in (("steps", "train.steps"), ("seed", "train.seed"),
                      ("device", "train.device"), ("threads", "train.threads"),
                      ("amp", "train.amp"), ("data_root", "data.root"),
                      ("init_from", "train.init_from")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    if getattr(args, "no_progress", False):
        out.append("train.progress=false")
    return out


def train_request(args: argparse.Namespace) -> TrainRequest:
    """The parsed train options as a :class:`~biva.runs.train.TrainRequest`.

    A resumed run keeps its saved config: options that would change it are refused rather
    than silently ignored; only the budget may grow (--steps, --set train.steps=,
    train.max_minutes=, train.max_cpu_minutes=), e.g. to train a finished run further."""
    if args.resume is None:
        return TrainRequest(config=args.config, data=args.data, image_size=args.image_size,
                            overrides=shortcut_overrides(args), run_dir=args.run_dir,
                            stop_after=args.stop_after)
    ignored = [flag for flag, given in (
        ("--seed", args.seed is not None), ("--amp", args.amp is not None),
        ("--data", args.data is not None), ("--config", args.config is not None),
        ("--init-from", getattr(args, "init_from", None) is not None),
        ("--run-dir", args.run_dir is not None and args.run_dir != args.resume)) if given]
    if ignored:
        raise ValueError(f"--resume continues {args.resume} with its saved config "
                         f"({args.resume / 'config.json'}); it cannot be combined with "
                         f"{', '.join(ignored)}")
    budget = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps is not None
                                     else [])
    return TrainRequest(resume=args.resume, overrides=budget, stop_after=args.stop_after)
