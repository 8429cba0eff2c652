"""``biva evaluate``: L_1, L_k, per-group KL of a trained run on a split."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..evaluation import evaluate_bounds, evaluation_split
from ..evaluation.loading import load_trained
from ..training import load_run_data
from ..utils.atomic import atomic_write_json
from .common import add_runtime_options, setup_runtime


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="importance-weighted bounds of a trained run",
        description="Compute L_1 (ELBO, with the KL of every latent group) and L_k on a split "
        "with the EMA weights of the best-validation (or latest) checkpoint; writes JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a biva run directory")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"])
    p.add_argument("--k", type=int, default=1000, help="importance samples for L_k (1: ELBO only)")
    p.add_argument("--prior-layers", type=int, default=0,
                   help="evaluate L^{>k} with this k (layers 1..k drawn from the prior)")
    p.add_argument("--units", choices=["nats", "bpd", "both"], default="both")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--n-examples", type=int, default=0, help="first N examples (0: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-batch", type=int, default=4096,
                   help="rows (samples x examples) of one batched pass: bounds memory")
    p.add_argument("--per-example", action="store_true", help="include per-example values")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: in run dir)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    add_runtime_options(p)
    p.set_defaults(func=run)


def evaluate_run(run_dir: Path, *, split: str = "test", k: int = 1000, prior_layers: int = 0,
                 checkpoint: str = "best", n_examples: int = 0, batch_size: int = 100,
                 max_batch: int = 4096, device="cpu", data_root: str | None = None,
                 per_example: bool = False) -> dict:
    """Evaluate a run's model on a split; returns the result dict (see evaluate_bounds)."""
    model, cfg, state = load_trained(run_dir, checkpoint, device)
    if data_root:
        cfg.data.root = data_root
    data = load_run_data(cfg)
    data_split = evaluation_split(data, split, seed=cfg.train.seed)
    t0 = time.perf_counter()
    res = evaluate_bounds(model, data_split, data.kind, cfg.model.bits, k=k,
                          batch_size=batch_size, max_batch=max_batch, n_examples=n_examples,
                          prior_layers=prior_layers, device=device)
    res.update({"split": split, "dataset": data.name, "checkpoint": state["checkpoint"],
                "step": state.get("step"), "seconds": time.perf_counter() - t0})
    if not per_example:
        res.pop("per_example")
    return res


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    res = evaluate_run(args.run_dir, split=args.split, k=args.k, prior_layers=args.prior_layers,
                       checkpoint=args.checkpoint, n_examples=args.n_examples,
                       batch_size=args.batch_size, max_batch=args.max_batch, device=device,
                       data_root=args.data_root, per_example=args.per_example)
    out = args.out or args.run_dir / f"eval_{args.split}_k{args.k}.json"
    atomic_write_json(out, res)
    summary = {key: v for key, v in res.items() if key.startswith("L_")}
    if args.units == "nats":
        summary = {key: v for key, v in summary.items() if not key.endswith("bpd")}
    elif args.units == "bpd":
        summary = {key: v for key, v in summary.items() if key.endswith("bpd")}
    print(json.dumps({"split": args.split, "n": res["n_examples"], **summary}, indent=1))
    print(f"written: {out}")
    return 0
