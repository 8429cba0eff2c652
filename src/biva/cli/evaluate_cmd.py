"""``biva evaluate``: L_1, L_K and the KL of every group of a trained run on a split."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from biva.cli.common import (
    HelpFormatter,
    add_renamed_option,
    add_run_dir_argument,
    add_runtime_options,
    nonnegative_int,
    positive_int,
    print_summary,
    setup_runtime,
)
from biva.runs.evaluate import EvalSettings, default_output, evaluate_run, write_evaluation
from biva.utils.run_lock import output_lock


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="importance-weighted bounds of a trained run",
        description="Compute L_1 (ELBO, with the KL of every latent group) and L_K on a split "
        "with the EMA weights of the best-validation (or latest) checkpoint; writes JSON.",
        formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                   help="the split to evaluate")
    p.add_argument("--samples", type=positive_int, default=None, metavar="K",
                   help="importance samples K of L_K (1: ELBO only; default: the run's "
                   "eval.n_samples)")
    p.add_argument("--prior-layers", type=nonnegative_int, default=0, metavar="k",
                   help="evaluate L^{>k}_K with this k (layers 1..k drawn from the prior)")
    p.add_argument("--units", choices=["nats", "bpd", "both"], default="both",
                   help="units of the printed summary (the JSON file holds both)")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--n-examples", type=nonnegative_int, default=None,
                   help="first N examples (0: all; default: the run's eval.n_examples)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="examples per batch (default: the run's eval.batch_size)")
    p.add_argument("--max-batch", type=positive_int, default=None,
                   help="rows (samples x examples) of one batched pass: bounds memory "
                   "(default: the run's eval.max_batch)")
    p.add_argument("--classifier-draws", type=positive_int, default=1,
                   help="semi-supervised runs: average q(y|x) over this many draws of z^BU "
                   "for the test error")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the latent draws: the same checkpoint and seed give the same "
                   "numbers")
    p.add_argument("--per-example", action="store_true", help="include per-example values")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: in run dir)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--data", type=Path, default=None, metavar="PATH",
                   help="evaluate on every image of another folder (or .npz) instead of the "
                   "run's split, in a seeded random order (so --n-examples takes a random "
                   "sample of a class-sorted folder); images are cropped and resized to the "
                   "model's size")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast for the network (the log-weights stay float32 and are "
                   "summed in float64); about 1.5-2x faster on CPUs with AVX-512 BF16 and GPUs")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last activations (faster convolutions, same results)")
    add_runtime_options(p)
    add_renamed_option(p, "--k", "--samples")
    add_renamed_option(p, "--class-samples", "--classifier-draws")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> EvalSettings:
    """The command's options as :class:`EvalSettings`."""
    return EvalSettings(
        split=args.split, n_samples=args.samples, prior_layers=args.prior_layers,
        checkpoint=args.checkpoint, n_examples=args.n_examples, batch_size=args.batch_size,
        max_batch=args.max_batch, classifier_draws=args.classifier_draws, seed=args.seed,
        amp=args.amp, channels_last=args.channels_last, per_example=args.per_example,
        data_path=args.data, data_root=args.data_root)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    settings = settings_from(args)
    out = args.out or default_output(args.run_dir, settings)
    # Two evaluations into one output would overwrite each other: the second is refused.
    with output_lock(out):
        res = evaluate_run(args.run_dir, settings, device=device,
                           progress=not args.no_progress)
        written = write_evaluation(args.run_dir, res, out, settings)
    if "classification" in res:
        print(classification_line(res["classification"], settings.source()))
    summary = {key: v for key, v in res.items() if key.startswith("L_")}
    if args.units != "both":
        summary = {key: v for key, v in summary.items()
                   if key.endswith("bpd") == (args.units == "bpd")}
    print_summary({"split": res["split"], "n_examples": res["n_examples"], **summary})
    for path in written:
        print(f"written: {path}")
    return 0


def classification_line(cls: dict, source: str) -> str:
    """The semi-supervised summary: error, the ELBO of eq. 19, the generative model's classes."""
    draws = f", q(y|x) over {cls['n_samples']} z^BU draws" if cls["n_samples"] > 1 else ""
    line = (f"{source} error: {100 * cls['error']:.2f}% ({cls['n_examples']} examples{draws}); "
            f"ELBO (eq. 19) {cls['elbo_U']:.3f} nats")
    if "generative_k1" in cls:
        g = cls["generative_k1"]
        line += (f"\nthe generative model's own classes, p(y|x) ∝ exp L_1(x, y): error "
                 f"{100 * g['error']:.2f}%, {g['class_information_nats']:.2f} of "
                 f"{math.log(len(cls['classes'])):.2f} nats about y, same class as q(y|x) "
                 f"for {100 * g['agreement_with_q']:.1f}%")
    return line
