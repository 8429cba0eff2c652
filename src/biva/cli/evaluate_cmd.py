"""``biva evaluate``: L_1, L_k, per-group KL of a trained run on a split."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ..evaluation import evaluate_bounds, evaluation_split
from ..evaluation.loading import load_trained
from ..training import load_run_data
from ..utils.atomic import atomic_write_json
from .common import (
    HelpFormatter,
    add_run_dir_argument,
    add_runtime_options,
    nonnegative_int,
    positive_int,
    progress_bar,
    setup_runtime,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="importance-weighted bounds of a trained run",
        description="Compute L_1 (ELBO, with the KL of every latent group) and L_k on a split "
        "with the EMA weights of the best-validation (or latest) checkpoint; writes JSON.",
        formatter_class=HelpFormatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                   help="the split to evaluate")
    p.add_argument("--k", type=positive_int, default=None,
                   help="importance samples for L_k (1: ELBO only; default: the run's eval.k)")
    p.add_argument("--prior-layers", type=nonnegative_int, default=0,
                   help="evaluate L^{>k} with this k (layers 1..k drawn from the prior)")
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
    p.add_argument("--class-samples", type=positive_int, default=1,
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
    p.set_defaults(func=run)


def evaluate_run(run_dir: Path, *, split: str = "test", k: int | None = None,
                 prior_layers: int = 0, checkpoint: str = "best", n_examples: int | None = None,
                 batch_size: int | None = None, max_batch: int | None = None, device="cpu",
                 data_root: str | None = None, per_example: bool = False, amp: str = "none",
                 channels_last: bool = True, progress: bool = False,
                 class_samples: int = 1, seed: int | None = 0,
                 data_path: Path | None = None) -> dict:
    """Evaluate a run's model on a split; returns the result dict (see evaluate_bounds).

    ``k``, ``n_examples``, ``batch_size`` and ``max_batch`` left as None come from the run's
    ``eval`` config section. ``amp="bf16"`` runs the bounds under bf16 autocast;
    ``progress`` draws a bar on stderr. A semi-supervised run's predictions average q(y|x)
    over ``class_samples`` draws of z^BU. ``seed`` fixes every latent draw (None: unseeded).
    """
    import torch

    from ..nn.blocks import use_channels_last

    model, cfg, state = load_trained(run_dir, checkpoint, device)
    classes = getattr(model, "num_classes", 0) if cfg.data.labels_per_class > 0 else 0
    if class_samples > 1 and not classes:  # refused before the data set is read
        raise ValueError(f"--class-samples {class_samples}: {run_dir} is not a semi-supervised "
                         "run (it has no classifier q(y|x))")
    use_channels_last(model, channels_last)
    k = cfg.eval.k if k is None else k
    n_examples = cfg.eval.n_examples if n_examples is None else n_examples
    batch_size = cfg.eval.batch_size if batch_size is None else batch_size
    max_batch = cfg.eval.max_batch if max_batch is None else max_batch
    if data_root:
        cfg.data.root = data_root
    if data_path is not None:
        data, data_split = images_of(data_path, cfg, seed if seed is not None else 0)
        split = f"all of {data_path}"
    else:
        data = load_run_data(cfg)
        data_split = evaluation_split(data, split, seed=cfg.train.seed)
    t0 = time.perf_counter()
    if classes:  # semi-supervised: every pass sums over the classes, C rows per sample
        max_batch = max(1, max_batch // classes)
    n = min(n_examples or len(data_split), len(data_split))
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16"), \
            progress_bar(n, f"L_1 and L_{k} on {split}", progress) as update:
        res = evaluate_bounds(model, data_split, data.kind, cfg.model.bits, k=k,
                              batch_size=batch_size, max_batch=max_batch, n_examples=n_examples,
                              prior_layers=prior_layers, device=device, progress=update,
                              seed=seed)
    res["amp"] = amp
    if classes and data_split.labels is not None:
        from ..evaluation.classification import evaluate_classification

        res["classification"] = evaluate_classification(
            model, data_split, data.kind, cfg.model.bits, batch_size=batch_size,
            n_examples=n_examples, n_samples=class_samples, seed=seed,
            class_names=list(data.class_names or []) or None)
    res.update({"split": split, "k": k, "dataset": data.name, "checkpoint": state["checkpoint"],
                "step": state.get("step"), "seconds": time.perf_counter() - t0})
    if not per_example:
        res.pop("per_example")
    return res


def images_of(path: Path, cfg, seed: int):
    """(the loaded data, every image of the folder or .npz at ``path`` as one split in a
    seeded random order), fitted to the run's model: size, channels and image kind checked."""
    import torch

    from ..data import ImageSplit, load_dataset

    side = cfg.model.input_shape[-1]
    data = load_dataset("npz" if path.is_file() else "folder", path=path, image_size=side,
                        seed=seed)
    parts = [getattr(data, s) for s in ("train", "valid", "test")]
    images = torch.cat([p.images for p in parts])
    sources = None
    if all(p.sources is not None for p in parts):
        sources = tuple(x for p in parts for x in p.sources)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    split = ImageSplit(images, None, sources).subset(order)
    if tuple(images.shape[1:]) != tuple(cfg.model.input_shape):
        raise ValueError(f"--data {path}: images of shape {tuple(images.shape[1:])} (C, H, W); "
                         f"the model takes {tuple(cfg.model.input_shape)}")
    want = "binary" if cfg.model.likelihood == "bernoulli" else "8bit"
    if data.kind != want:
        raise ValueError(f"--data {path}: {data.kind} images; the model ({cfg.model.likelihood}"
                         f" likelihood) scores {want} images")
    return data, split


def run(args: argparse.Namespace) -> int:
    from ..utils.run_lock import output_lock

    device = setup_runtime(args)
    out = args.out or default_output(args)
    # Two evaluations into one output would overwrite each other: the second is refused.
    with output_lock(out):
        return _evaluate(args, device, out)


def default_output(args: argparse.Namespace) -> Path:
    """RUN_DIR/eval_<split>_k<k>[_prior<k>].json, k from --k or the run's eval.k."""
    k = args.k
    if k is None:
        from ..training.config import read_run_config

        k = read_run_config(args.run_dir / "config.json").eval.k
    prior = f"_prior{args.prior_layers}" if args.prior_layers else ""  # L^{>k}: its own file
    what = args.split if args.data is None else f"data_{args.data.stem}"
    return args.run_dir / f"eval_{what}_k{k}{prior}.json"


def _evaluate(args: argparse.Namespace, device, out: Path) -> int:
    res = evaluate_run(args.run_dir, split=args.split, k=args.k, prior_layers=args.prior_layers,
                       checkpoint=args.checkpoint, n_examples=args.n_examples,
                       batch_size=args.batch_size, max_batch=args.max_batch, device=device,
                       data_root=args.data_root, per_example=args.per_example, amp=args.amp,
                       channels_last=args.channels_last, progress=not args.no_progress,
                       class_samples=args.class_samples, seed=args.seed,
                       data_path=args.data)
    atomic_write_json(out, res)
    if "classification" in res:  # semi-supervised run: error and confusion matrix
        from ..evaluation.classification import write_confusion

        cls = res["classification"]
        for path in write_confusion(cls, args.run_dir, args.split):
            print(f"written: {path}")
        draws = f", q(y|x) over {cls['n_samples']} z^BU draws" if cls["n_samples"] > 1 else ""
        print(f"{args.split} error: {100 * cls['error']:.2f}% ({cls['n_examples']} examples"
              f"{draws}); ELBO (eq. 19) {cls['elbo_U']:.3f} nats")
        if "generative_k1" in cls:
            g = cls["generative_k1"]
            print(f"the generative model's own classes, p(y|x) ∝ exp L_1(x, y): error "
                  f"{100 * g['error']:.2f}%, {g['class_information_nats']:.2f} of "
                  f"{math.log(len(cls['classes'])):.2f} nats about y, same class as q(y|x) "
                  f"for {100 * g['agreement_with_q']:.1f}%")
    summary = {key: v for key, v in res.items() if key.startswith("L_")}
    if args.units == "nats":
        summary = {key: v for key, v in summary.items() if not key.endswith("bpd")}
    elif args.units == "bpd":
        summary = {key: v for key, v in summary.items() if key.endswith("bpd")}
    print(json.dumps({"split": args.split, "n": res["n_examples"], **summary}, indent=1))
    print(f"written: {out}")
    return 0
