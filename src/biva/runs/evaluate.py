"""Evaluate a run directory: L_1 (with the KL of every group), L_K and L^{>k}_K on a split or
on a folder of images, and a semi-supervised run's test error."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from biva.config import DataKind, RunConfig, read_run_config
from biva.data import ImageSplit, evaluation_split, load_dataset, load_run_data
from biva.evaluation.classification import write_confusion
from biva.nn.blocks import use_channels_last
from biva.objectives.classification import evaluate_classification
from biva.objectives.splits import evaluate_bounds
from biva.runs.loading import load_trained
from biva.utils.atomic import atomic_write_json
from biva.utils.progress import progress_bar


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how. None means "the run's ``eval`` config section".

    ``n_samples``: importance samples K of L_K (1: the ELBO only); ``prior_layers``: the k of
    L^{>k}_K (layers 1..k drawn from the conditional prior; 0: L_K); ``classifier_draws``:
    z^BU draws averaged by q(y|x) for a semi-supervised run's error; ``seed``: fixes every
    latent draw (None: the global RNG as it is); ``data_path``: every image of a folder or
    .npz instead of the run's ``split``.
    """

    split: str = "test"
    n_samples: int | None = None
    prior_layers: int = 0
    checkpoint: str = "best"
    n_examples: int | None = None
    batch_size: int | None = None
    max_batch: int | None = None
    classifier_draws: int = 1
    seed: int | None = 0
    amp: str = "none"
    channels_last: bool = True
    per_example: bool = False
    data_path: Path | None = None
    data_root: str | None = None

    def resolved(self, cfg: RunConfig) -> EvalSettings:
        """These settings with every None taken from the run config's ``eval`` section."""
        e = cfg.eval
        pick = lambda v, d: d if v is None else v  # noqa: E731
        return replace(self, n_samples=pick(self.n_samples, e.n_samples),
                       n_examples=pick(self.n_examples, e.n_examples),
                       batch_size=pick(self.batch_size, e.batch_size),
                       max_batch=pick(self.max_batch, e.max_batch))

    def source(self) -> str:
        """What is evaluated, as a result file names it: the split, or data_<folder name>."""
        return self.split if self.data_path is None else f"data_{self.data_path.stem}"



def bounds_named(k: int) -> str:
    """What an evaluation with K = ``k`` importance samples measures: "L_1 and L_k", or
    "L_1" alone when k = 1."""
    return "L_1" if k == 1 else f"L_1 and L_{k}"

def default_output(run_dir: str | Path, settings: EvalSettings) -> Path:
    """RUN_DIR/eval_<split>_k<K>[_prior<k>].json (K: importance samples; prior<k>: L^{>k})."""
    run_dir = Path(run_dir)
    n = settings.n_samples
    if n is None:
        n = read_run_config(run_dir / "config.json").eval.n_samples
    prior = f"_prior{settings.prior_layers}" if settings.prior_layers else ""
    return run_dir / f"eval_{settings.source()}_k{n}{prior}.json"


def evaluate_run(run_dir: str | Path, settings: EvalSettings = EvalSettings(), *,
                 device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Evaluate the run's EMA model (checkpoint ``settings.checkpoint``); returns the result
    of :func:`~biva.objectives.splits.evaluate_bounds` (nats per example and bits/dim) with
    ``split``, ``k`` (= K), ``dataset``, ``checkpoint``, ``step``, ``seconds`` and, for a
    semi-supervised run, ``classification``. ``progress``: a bar on stderr.
    """
    # Test numbers come from the best-validation weights, or from what the user names.
    model, cfg, state = load_trained(run_dir, settings.checkpoint, device, strict=True)
    s = settings.resolved(cfg)
    classes = getattr(model, "num_classes", 0) if cfg.data.labels_per_class > 0 else 0
    if s.classifier_draws > 1 and not classes:  # refused before the data set is read
        raise ValueError(f"--classifier-draws {s.classifier_draws}: {run_dir} is not a "
                         "semi-supervised run (it has no classifier q(y|x))")
    use_channels_last(model, s.channels_last)
    if s.data_root:
        cfg.data.root = s.data_root
    if s.data_path is not None:
        folder = split_folder(s.data_path, s.split)
        data, split = images_of(folder, cfg, s.seed if s.seed is not None else 0)
        label = f"all of {folder}"
    else:
        data = load_run_data(cfg)
        split, label = evaluation_split(data, s.split, seed=cfg.train.seed), s.split
    # Semi-supervised: every pass sums over the classes, C rows a sample.
    max_batch = max(1, s.max_batch // classes) if classes else s.max_batch
    n = min(s.n_examples or len(split), len(split))
    t0 = time.perf_counter()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                        enabled=s.amp == "bf16"), \
            progress_bar(n, f"{bounds_named(s.n_samples)} on {label}", progress) as update:
        res = evaluate_bounds(model, split, data.kind, cfg.model.bits, n_samples=s.n_samples,
                              batch_size=s.batch_size, max_batch=max_batch,
                              n_examples=s.n_examples, prior_layers=s.prior_layers,
                              device=device, seed=s.seed, progress=update)
    res["amp"] = s.amp
    if classes and split.labels is not None:
        res["classification"] = evaluate_classification(
            model, split, data.kind, cfg.model.bits, batch_size=s.batch_size,
            n_examples=s.n_examples, n_samples=s.classifier_draws, seed=s.seed,
            class_names=list(data.class_names or []) or None)
    res.update({"split": label, "k": s.n_samples, "dataset": data.name,
                "checkpoint": state["checkpoint"], "step": state.get("step"),
                "seconds": time.perf_counter() - t0})
    if not s.per_example:
        res.pop("per_example")
    return res


def write_evaluation(run_dir: str | Path, res: dict, out: Path, settings: EvalSettings
                     ) -> list[Path]:
    """Write ``res`` to ``out`` (JSON) and, for a semi-supervised run, its confusion matrix
    (JSON and PNG in the run directory); returns the files written."""
    atomic_write_json(out, res)
    written = [out]
    if "classification" in res:
        written += list(write_confusion(res["classification"], Path(run_dir),
                                        settings.source()))
    return written


def split_folder(path: Path, split: str) -> Path:
    """The folder ``--data`` evaluates: ``path`` itself, or its ``split`` subfolder when
    ``path`` is laid out by split (``train/``, ``valid/``, ``test/`` subfolders, the layout
    ``biva train --data`` takes) and has one for ``split``."""
    path = Path(path)
    if path.is_dir() and (path / split).is_dir():
        return path / split
    return path


def images_of(path: Path, cfg: RunConfig, seed: int) -> tuple:
    """(the loaded data, every image of the folder or .npz at ``path`` as one split in a
    seeded random order), fitted to the run's model: size, channels and image kind checked."""
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
    want = DataKind.for_likelihood(cfg.model.likelihood)
    if data.kind != want:
        raise ValueError(f"--data {path}: {data.kind} images; the model ({cfg.model.likelihood}"
                         f" likelihood) scores {want} images")
    return data, split
