"""A pretrained model's figures measured on its own data: the card's scores (:func:`measure`,
what the suite re-measures on a fixed slice) and the headline figures with their 95% interval
(:func:`measure_interval`, on the whole test split or a seeded subset of it).

Metrics: ``L_K`` / ``bpd_K`` (the bound with K importance samples, nats per example / bits per
dimension), ``auroc:NAME`` (the shipped detector's AUROC against dataset NAME's test images)
and ``error`` (a classifier's error: the fraction whose most probable class is wrong).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from biva.data import evaluation_split, fit_to_shape, load_run_data
from biva.objectives.classification import evaluate_classification
from biva.objectives.splits import evaluate_bounds
from biva.objectives.units import bits_per_dim
from biva.ood.metrics import ood_metrics, ood_metrics_ci
from biva.ood.sets import load_like_run

if TYPE_CHECKING:
    from biva.pretrained import Pretrained

Z_95 = 1.959964   # the standard normal's 97.5% quantile


def measure(p: Pretrained, metric: str, *, split: str = "test", n_examples: int = 200,
            seed: int = 0, data_root: str | Path | None = None) -> float:
    """One score of a card, re-measured on the first ``n_examples`` of the seeded evaluation
    ``split`` of the model's own dataset (read from ``data_root`` or the config's):

    * ``L_1``, ``L_K``: the bound in nats per example (K importance samples, sample ``seed``);
    * ``bpd_1``, ``bpd_K``: the same in bits per dimension, -L / (D ln 2);
    * ``auroc:NAME``: the shipped detector's AUROC against the first ``n_examples`` of
      dataset NAME's test split (read like the model's data; 8-bit images brought to its
      shape), its draws at ``seed``;
    * ``error``: a classifier's error, the fraction of the ``n_examples`` whose most probable
      class under q(y|x) (one z^BU draw at ``seed``) is not the label.
    """
    return measure_interval(p, metric, split=split, n_examples=n_examples, seed=seed,
                            data_root=data_root, interval=False)["value"]


def measure_interval(p: Pretrained, metric: str, *, split: str = "test", n_examples: int = 0,
                     seed: int = 0, subset_seed: int | None = None,
                     data_root: str | Path | None = None, interval: bool = True) -> dict:
    """:func:`measure` on ``n_examples`` of the seeded ``split`` (0: all of it; the first ones,
    or with ``subset_seed`` a random subset drawn with that seed, of the anomalies too), with
    a 95% interval over the images and the Monte Carlo draws (one draw per image, so the
    spread over images holds both): the normal interval of the mean for a bound, Wilson's for
    an error, a percentile bootstrap over both image sets (200 replicates) for an AUROC.

    Returns {"metric", "split", "n_examples", "subset", "seed", "value", "interval_95":
    [lo, hi]} ("subset": "all", "first" or "seeded:S"; no interval with ``interval=False``).
    """
    cfg = p.config
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=str(data_root)))
    data = load_run_data(cfg)
    examples = evaluation_split(data, split, seed=cfg.train.seed)
    n = min(n_examples, len(examples)) if n_examples else len(examples)
    subset = ("all" if n == len(examples) else "first" if subset_seed is None
              else f"seeded:{subset_seed}")
    if subset.startswith("seeded"):
        examples = _seeded_subset(examples, n, subset_seed)
    if metric.startswith("auroc:"):
        value, ci, n = _auroc(p, metric[len("auroc:"):], data, examples, cfg, n, seed,
                              interval, subset_seed if subset.startswith("seeded") else None)
    elif metric == "error":
        value, ci, n = _error(p, examples, data.kind, cfg, n, seed)
    else:
        value, ci, n = _bound(p, metric, examples, data.kind, cfg, n, seed)
    out = {"metric": metric, "split": split, "n_examples": n, "subset": subset, "seed": seed,
           "value": value}
    if interval:
        out["interval_95"] = ci
    return out


def _bound(p: Pretrained, metric: str, examples, kind: str, cfg, n: int, seed: int):
    """(mean, normal 95% interval, images) of L_K in nats or bits/dim."""
    unit, _, k = metric.partition("_")
    if unit not in ("L", "bpd") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric {metric!r}: expected L_K or bpd_K (K >= 1, e.g. L_1, "
                         "bpd_100), auroc:DATASET or error")
    res = evaluate_bounds(p.model, examples, kind, cfg.model.bits, n_samples=int(k),
                          batch_size=cfg.eval.batch_size, max_batch=cfg.eval.max_batch,
                          n_examples=n, device=next(p.model.parameters()).device, seed=seed)
    values = torch.tensor(res["per_example"][f"L_{k}"], dtype=torch.float64)
    half = Z_95 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    mean = res[f"L_{k}"]
    ends = [mean - half, mean + half]
    if unit == "bpd":   # -L / (D ln 2): the order of the ends flips
        ends = sorted(float(bits_per_dim(torch.tensor(e), res["dims"])) for e in ends)
        return res[f"L_{k}_bpd"], ends, len(values)
    return mean, ends, len(values)


def _error(p: Pretrained, examples, kind: str, cfg, n: int, seed: int):
    """(error, Wilson 95% interval, images) of a classifier."""
    if not p.is_classifier:
        raise ValueError(f"{p.name}: metric 'error' needs a classifier (a semi-supervised "
                         "model)")
    res = evaluate_classification(p.model, examples, kind, cfg.model.bits,
                                  batch_size=cfg.eval.batch_size, n_examples=n, seed=seed,
                                  with_bounds=False)
    error, m = float(res["error"]), int(res["n_examples"])
    return error, wilson_interval(round(error * m), m), m


def wilson_interval(errors: int, n: int, z: float = Z_95) -> list[float]:
    """Wilson's score interval of a proportion errors / n."""
    if n < 1:
        return [0.0, 1.0]
    f = errors / n
    centre = (f + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _seeded_subset(split, n: int, subset_seed: int):
    """n images of ``split`` drawn without replacement with ``subset_seed`` (in file order)."""
    g = torch.Generator().manual_seed(subset_seed)
    return split.subset(torch.randperm(len(split), generator=g)[:n].sort().values)


def _auroc(p: Pretrained, name: str, data, examples, cfg, n: int, seed: int, interval: bool,
           subset_seed: int | None):
    """(AUROC, bootstrap 95% interval, images a set) of the shipped detector, ``examples``
    (in) against dataset ``name``'s test images (the first n, or n drawn with
    ``subset_seed``)."""
    if p.detector is None:
        raise ValueError(f"{p.name}: auroc:{name} needs a shipped detector (detector.json)")
    other = load_like_run(name, None, data, root=cfg.data.root, seed=cfg.train.seed)
    ood = evaluation_split(other, "test", seed=cfg.train.seed)
    shape = tuple(cfg.model.input_shape)
    if other.kind == "8bit" and tuple(ood.images.shape[1:]) != shape:
        ood = fit_to_shape(ood, shape)
    if subset_seed is not None and n < len(ood):
        ood = _seeded_subset(ood, n, subset_seed)
    det = copy.copy(p.detector)
    det.seed = seed
    a_in = det.anomaly_score(examples.images[:n])
    a_out = det.anomaly_score(ood.images[:n])
    if not interval:
        return float(ood_metrics(-a_in, -a_out)["auroc"]), None, len(a_in)
    res = ood_metrics_ci(-np.asarray(a_in), -np.asarray(a_out), n_boot=200, seed=seed)
    return float(res["auroc"]), res["auroc_ci"], len(a_in)
