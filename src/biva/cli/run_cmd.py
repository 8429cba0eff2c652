"""``biva run``: the whole job -- train, evaluate on the test split, write samples and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..evaluation import evaluation_split, save_grid
from ..evaluation.loading import load_trained
from ..evaluation.plots import plot_training_curves
from ..training import load_run_data
from ..utils.atomic import atomic_write_json
from .common import HelpFormatter, nonnegative_int, positive_int
from .evaluate_cmd import evaluate_run
from .sample_cmd import write_samples
from .train_cmd import add_train_options, make_trainer


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="train, evaluate (L_1, L_k on test), write samples and figures",
        description="The whole job on one config: train (or resume), evaluate L_1 and L_k on "
        "the test split with the best-validation EMA weights, and write sample, "
        "reconstruction and training-curve PNGs into RUN_DIR/figures.",
        formatter_class=HelpFormatter)
    add_train_options(p)
    p.add_argument("--k", type=positive_int, default=None,
                   help="importance samples for L_k (default: the config's eval.k)")
    p.add_argument("--eval-examples", type=nonnegative_int, default=None,
                   help="test examples (0: all; default: the config's eval.n_examples)")
    p.set_defaults(func=run)


def write_reconstructions(model, split, kind: str, bits: int, out: Path, n: int = 32) -> Path:
    """Rows of originals and their reconstructions (mean of p(x|z), z ~ q(z|x))."""
    from ..data import to_model_input

    x = to_model_input(split.images[:n], kind, bits).to(model.out_conv.v.device)
    with torch.no_grad():
        recon = model.decode(model(x).x_params, "mean")
    cols = min(n, 16)
    rows = []
    for start in range(0, n, cols):
        rows += [x[start:start + cols], recon[start:start + cols]]
    return save_grid(torch.cat(rows), out, kind=kind, nrow=cols)


def run(args: argparse.Namespace) -> int:
    trainer, run_dir = make_trainer(args)
    trainer.fit()
    if trainer.rank != 0:
        return 0
    device = trainer.device
    res = evaluate_run(run_dir, split="test", k=args.k, n_examples=args.eval_examples,
                       device=device, batch_size=trainer.cfg.eval.batch_size,
                       max_batch=trainer.cfg.eval.max_batch,
                       progress=trainer.cfg.train.progress)
    results = run_dir / f"eval_test_k{res['k']}.json"
    atomic_write_json(results, res)
    model, cfg, _ = load_trained(run_dir, "best", device)
    data = load_run_data(cfg)
    figures = run_dir / "figures"
    written = [
        write_samples(model, data.kind, figures / "samples.png", 64, [1.0], seed=0),
        write_samples(model, data.kind, figures / "samples_temperatures.png", 12,
                      [1.0, 0.85, 0.7, 0.5], seed=0),
        write_reconstructions(model, evaluation_split(data, "test", cfg.train.seed), data.kind,
                              cfg.model.bits, figures / "reconstructions.png"),
        plot_training_curves(run_dir),
    ]
    if "classification" in res:  # semi-supervised run: confusion matrix, samples by class
        from ..evaluation.classification import write_class_samples, write_confusion

        written += [write_confusion(res["classification"], run_dir, "test")[1],
                    write_class_samples(model, data.kind, figures / "samples_by_class.png")]
        print(f"test error: {100 * res['classification']['error']:.2f}%")
    summary = {key: round(v, 4) for key, v in res.items()
               if key.startswith("L_") and isinstance(v, float)}
    print(json.dumps({"test_examples": res["n_examples"], **summary}, indent=1))
    print(f"results: {results}")
    for path in written:
        print(f"figure:  {path}")
    return 0
