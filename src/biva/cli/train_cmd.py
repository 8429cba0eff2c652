"""``biva train``: train a model from a config, or resume a run."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from ..training import Trainer, load_run_config
from ..training.config import shipped_configs
from ..training.own_data import CPU_CONFIGS, config_for_data
from .common import HelpFormatter


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


def default_run_dir(config: str) -> Path:
    """runs/<config name>-<YYYYmmdd-HHMMSS>."""
    return Path("runs") / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_trainer(args: argparse.Namespace) -> tuple[Trainer, Path]:
    """A new or resumed Trainer from the parsed train options, and its run directory."""
    from ..training.semi_supervised import resume_trainer, trainer_class

    if args.resume is not None:
        # The resumed run keeps its saved config: options that would change it are refused
        # rather than silently ignored. Only the budget may grow (--steps, --set train.steps=,
        # train.max_minutes=, train.max_cpu_minutes=), e.g. to train a finished run further.
        ignored = [flag for flag, given in (
            ("--seed", args.seed is not None), ("--amp", args.amp is not None),
            ("--data", args.data is not None), ("--config", args.config is not None),
            ("--init-from", getattr(args, "init_from", None) is not None),
            ("--run-dir", args.run_dir is not None and args.run_dir != args.resume))
            if given]
        if ignored:
            raise ValueError(f"--resume continues {args.resume} with its saved config "
                             f"({args.resume / 'config.json'}); it cannot be combined with "
                             f"{', '.join(ignored)}")
        budget = list(args.overrides)
        if args.steps is not None:
            budget.append(f"train.steps={args.steps}")
        return (resume_trainer(args.resume, budget=budget, stop_after=args.stop_after),
                args.resume)
    data = None
    if args.data is not None:
        print(f"reading the images of {args.data} ...", flush=True)
        cfg, data, lines = config_for_data(args.data, args.config, shortcut_overrides(args),
                                           args.image_size)
        print("\n".join(lines))
    elif args.image_size is not None:
        raise ValueError("--image-size applies to --data PATH (or set data.image_size)")
    else:
        cfg = load_run_config(args.config or "digits", shortcut_overrides(args))
        cfg.name = Path(args.config or "digits").stem
    run_dir = args.run_dir or default_run_dir(cfg.name)
    # data.labels_per_class > 0 selects the semi-supervised trainer.
    return trainer_class(cfg)(cfg, run_dir, data=data, stop_after=args.stop_after), run_dir


def configured_device(args: argparse.Namespace) -> str:
    """train.device of the run being started or resumed ("auto" when unreadable)."""
    if args.resume is not None:
        from ..utils.config_io import load_config_file

        try:
            return str(load_config_file(args.resume / "config.json")["train"]["device"])
        except (OSError, KeyError, TypeError, ValueError):
            return "auto"  # Trainer.resume reports a missing or bad config itself
    default = CPU_CONFIGS[32] if args.data is not None else "digits"
    return load_run_config(args.config or default, shortcut_overrides(args)).train.device


def run(args: argparse.Namespace) -> int:
    from ..training.distributed import destroy_distributed, init_distributed

    # Under torchrun (WORLD_SIZE > 1) every rank joins the process group first: NCCL on CUDA,
    # gloo on CPU. The Trainer sees the group and wraps the model in DDP.
    distributed = init_distributed(configured_device(args))
    try:
        return _train(args)
    finally:
        if distributed:
            destroy_distributed()


def _train(args: argparse.Namespace) -> int:
    trainer, run_dir = make_trainer(args)
    trainer.fit()
    if trainer.rank == 0:
        best = trainer.best_valid
        if hasattr(trainer, "best_valid_error"):  # semi-supervised: best = lowest error
            print(f"run directory: {run_dir}  (step {trainer.step}, best validation error "
                  f"{100 * trainer.best_valid_error:.2f}%, {trainer.skipped} skipped updates)")
        else:
            bpd = ""
            if trainer.data.kind == "8bit" and math.isfinite(best):
                from ..objectives import bits_per_dim

                dims = math.prod(trainer.cfg.model.input_shape)
                bpd = f" = {float(bits_per_dim(best, dims)):.3f} bits/dim"
            print(f"run directory: {run_dir}  (step {trainer.step}, best validation ELBO "
                  f"{best:.3f} nats{bpd}, {trainer.skipped} skipped updates)")
        if trainer.session_seconds > 0:
            # The session's mean (validations included), not the last log window's.
            print(f"throughput: {trainer.session_images / trainer.session_seconds:.1f} "
                  f"images/s over {trainer.session_seconds / 60:.1f} min of training")
    return 0
