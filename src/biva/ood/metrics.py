"""Anomaly detection with the L^{>k} bound (paper section 3.3, Table 5, Figure 4).

Scores follow scikit-learn's ``score_samples`` convention: a score is the per-example
L^{>k}_K in nats, higher = more normal. The detection metrics treat the out-of-distribution
(OOD) set as the positive class with anomaly score -L^{>k}. Bits/dim (natural images) are
-L / (D ln 2): a decreasing map, so the metrics are the same in either unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from biva.config import DataKind
from biva.evaluation.style import save_png
from biva.objectives import bits_per_dim, importance_weighted_bound

# Named experiments: (in-distribution dataset, OOD datasets). fashion_vs_mnist is the binary
# pair of Table 5 and cifar10_vs_svhn the natural-image one (the SVHN files are not shipped).
OOD_PAIRS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fashion_vs_mnist": ("fashion_mnist", ("mnist",)),
    "mnist_vs_fashion": ("mnist", ("fashion_mnist",)),
    "cifar10_vs_svhn": ("cifar10", ("svhn",)),
}

METRIC_CONVENTION = (
    "positive class = out-of-distribution; anomaly score = -L^{>k} (higher = more anomalous); "
    "auroc = ROC AUC with ties counted 1/2; auprc = average precision (sklearn's "
    "average_precision_score); fpr_at_95_tpr (fpr_at_80_tpr) = fraction of in-distribution "
    "examples flagged at the highest threshold that flags >= 95% (80%) of the OOD examples"
)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return fallback if param is None else param.device


@torch.no_grad()
def score_samples(model: nn.Module, x: Tensor, *, k: int = 0, n_samples: int = 1,
                  batch_size: int = 100, max_batch: int = 4096) -> Tensor:
    """Per-example L^{>k}_{n_samples} of x (N, C, H, W) in model-input space: (N,) float64 nats.

    Higher = more normal (scikit-learn's ``score_samples`` convention); k = 0 is the ELBO
    (n_samples = 1) or L_K. Runs in eval mode; returned on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, x.device)
    parts = [importance_weighted_bound(model, x[i:i + batch_size].to(device), n_samples,
                                       prior_layers=k, max_batch=max_batch).cpu()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


# ----------------------------------------------------------------------------- metrics


def _as_1d(scores, what: str) -> np.ndarray:
    arr = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores,
                     dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"ood_metrics: {what} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"ood_metrics: {what} holds NaN scores")
    return arr


def _operating_points(in_scores: np.ndarray, out_scores: np.ndarray):
    """Cumulative (tp, fp) at each distinct anomaly threshold, highest threshold first."""
    anomaly = -np.concatenate([out_scores, in_scores])
    positive = np.concatenate([np.ones(out_scores.size), np.zeros(in_scores.size)])
    order = np.argsort(-anomaly, kind="mergesort")
    anomaly, positive = anomaly[order], positive[order]
    # Tied examples enter together: keep only the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(anomaly))[0], anomaly.size - 1]
    tp = np.cumsum(positive)[last]
    fp = (last + 1) - tp
    return tp, fp


def ood_metrics(in_scores, out_scores) -> dict:
    """AUROC, AUPRC and FPR@95%TPR from L^{>k} scores (in: (N,), out: (M,), higher = normal).

    OOD is the positive class and -score the anomaly score. Ties are handled as scikit-learn's
    ``roc_auc_score`` / ``average_precision_score`` do; units cancel (nats or bits/dim alike).
    """
    s_in, s_out = _as_1d(in_scores, "in_scores"), _as_1d(out_scores, "out_scores")
    tp, fp = _operating_points(s_in, s_out)
    n_pos, n_neg = s_out.size, s_in.size
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]
    # Trapezoids over distinct thresholds: tied in/out pairs count 1/2, as in sklearn.
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tp / (tp + fp)
    auprc = float(np.sum(np.diff(np.r_[0.0, tp / n_pos]) * precision))
    # FPR only grows as the threshold falls, so the first point reaching the TPR is the best.
    # The small slack keeps 0.95 * n exact despite float division (e.g. 19/20).
    def fpr_at(rate: float) -> float:
        hit = np.nonzero(tp / n_pos >= rate - 1e-12)[0][0]
        return float(fp[hit] / n_neg)

    return {"auroc": auroc, "auprc": auprc, "fpr_at_80_tpr": fpr_at(0.80),
            "fpr_at_95_tpr": fpr_at(0.95), "n_in": int(n_neg), "n_out": int(n_pos)}


METRIC_NAMES = ("auroc", "auprc", "fpr_at_80_tpr", "fpr_at_95_tpr")


def ood_metrics_ci(in_scores, out_scores, *, n_boot: int = 200, level: float = 0.95,
                   seed: int = 0) -> dict:
    """:func:`ood_metrics` plus percentile bootstrap intervals ``{name}_ci: [lo, hi]``.

    Each replicate resamples the in- and out-of-distribution sets with replacement
    (independently, sizes kept); ``n_boot = 0`` gives no intervals.
    """
    s_in, s_out = _as_1d(in_scores, "in_scores"), _as_1d(out_scores, "out_scores")
    res = ood_metrics(s_in, s_out)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = {m: np.empty(n_boot) for m in METRIC_NAMES}
        for b in range(n_boot):
            r = ood_metrics(s_in[rng.integers(0, s_in.size, s_in.size)],
                            s_out[rng.integers(0, s_out.size, s_out.size)])
            for m in METRIC_NAMES:
                reps[m][b] = r[m]
        a = (1 - level) / 2
        for m in METRIC_NAMES:
            res[f"{m}_ci"] = [float(v) for v in np.quantile(reps[m], [a, 1 - a])]
        res["n_boot"] = n_boot
    return res


# ----------------------------------------------------------------------------- table


def ood_table(scores: Mapping[str, Mapping[int, Tensor]], *, in_name: str, kind: str,
              dims: int, n_samples: int = 1) -> dict:
    """Table 5 as a JSON-ready dict: mean L^{>k} per dataset and k, in nats and bits/dim.

    ``scores[name][k]`` is (N,) nats; ``dims`` = C*H*W. ``unit`` is what the Markdown shows:
    nats for binary images, bits/dim for 8-bit ones (both are stored).
    """
    ks = sorted({int(k) for per_k in scores.values() for k in per_k})
    datasets = {}
    for name, per_k in scores.items():
        cells = {}
        for k in ks:
            v = per_k[k].double()
            mean = float(v.mean())
            # One image has no spread to estimate: null (as biva evaluate writes), not 0.0.
            stderr = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None
            cells[str(k)] = {"mean_nats": mean, "stderr_nats": stderr,
                             "bits_per_dim": float(bits_per_dim(mean, dims)),
                             "stderr_bits_per_dim": (None if stderr is None
                                                     else stderr / (dims * math.log(2.0)))}
        n = int(next(iter(per_k.values())).numel()) if per_k else 0
        datasets[name] = {"role": "in" if name == in_name else "ood", "n": n, "k": cells}
    unit = DataKind(kind).unit
    return {"in_distribution": in_name, "kind": kind, "dims": dims, "n_samples": n_samples,
            "ks": ks, "unit": unit,
            "note": "mean_nats is the mean L^{>k} (a lower bound on log p(x), higher = more "
                    "normal); bits_per_dim = -mean_nats / (dims ln 2), lower = more normal. "
                    "The paper's Table 5 shows -L^{>k} for binary images.",
            "datasets": datasets}


def table_markdown(table: dict) -> str:
    """The :func:`ood_table` dict as a Markdown table (columns: k from high to low, as Table 5)."""
    nats = table["unit"] == "nats"
    ks = sorted(table["ks"], reverse=True)
    head = [f"L^{{>{k}}}" for k in ks]
    unit = "L^{>k} in nats (higher = more normal)" if nats else "bits/dim (lower = more normal)"
    lines = [f"Mean test L^{{>k}}_{table['n_samples']}, {unit}; "
             f"in-distribution: {table['in_distribution']}.", "",
             "| dataset | n | " + " | ".join(head) + " |",
             "|---|---|" + "---|" * len(ks)]
    for name, row in table["datasets"].items():
        cells = []
        for k in ks:
            c = row["k"][str(k)]
            value, err = ((c["mean_nats"], c["stderr_nats"]) if nats
                          else (c["bits_per_dim"], c["stderr_bits_per_dim"]))
            digits = 2 if nats else 3
            spread = "(one image)" if err is None else f"± {err:.{digits}f}"
            cells.append(f"{value:.{digits}f} {spread}")
        label = f"{name} (in)" if row["role"] == "in" else name
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- histograms


def gaussian_kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE of 1-d ``values`` on ``grid`` (G,), Scott's bandwidth std * n^(-1/5).

    A density (integrates to 1) in units of 1 / ``values``; constant data get a small
    positive bandwidth instead of failing.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    std = values.std(ddof=1) if n > 1 else 0.0
    h = std * n ** (-0.2) if std > 0 else max(1e-3, 1e-3 * abs(float(values.mean())))
    density = np.zeros(grid.shape, dtype=np.float64)
    for chunk in np.array_split(values, max(1, n // 2048)):   # bounds memory at G x 2048
        u = (grid[:, None] - chunk[None, :]) / h
        density += np.exp(-0.5 * u * u).sum(1)
    return density / (n * h * math.sqrt(2 * math.pi))


def plot_ood_histograms(scores: Mapping[str, Mapping[int, Tensor]], path: str | Path, *,
                        in_name: str, kind: str, dims: int, ks: Sequence[int] | None = None,
                        quantity: str | None = None) -> Path:
    """Figure 4: per k, histograms + KDE of every dataset's L^{>k}; writes one PNG.

    Binary data are shown as L^{>k} in nats, 8-bit data in bits/dim; ``quantity`` names another
    per-k value in nats (e.g. "LLR", with kind="binary" to keep nats). The x range keeps the
    central 99% of the pooled values so one extreme example cannot flatten the panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ks = sorted({int(k) for per_k in scores.values() for k in per_k}, reverse=True) \
        if ks is None else list(ks)
    nats = DataKind(kind).unit == "nats"
    ncol = min(len(ks), 4)
    nrow = math.ceil(len(ks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False,
                             constrained_layout=True)
    names = [in_name] + [n for n in scores if n != in_name]
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, k in zip(axes.flat, ks, strict=False):
        values = {}
        for name in names:
            v = scores[name][k].double().numpy()
            values[name] = v if nats else np.asarray(bits_per_dim(v, dims))
        pooled = np.concatenate(list(values.values()))
        # Trim the 0.5% tails only when there are enough values to have tails.
        lo, hi = (np.percentile(pooled, [0.5, 99.5]) if pooled.size >= 200
                  else (pooled.min(), pooled.max()))
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        grid = np.linspace(lo, hi, 400)
        bins = int(np.clip(np.sqrt(pooled.size), 10, 60))
        for name in names:
            v = values[name]
            label = f"{name} (in)" if name == in_name else name
            if ((v >= lo) & (v <= hi)).any():  # a density of no values is 0 / 0
                ax.hist(v, bins=bins, range=(lo, hi), density=True, alpha=0.35,
                        color=colors[name], label=label)
            ax.plot(grid, gaussian_kde(v, grid), color=colors[name], lw=1.5)
        ax.set_title(f"k = {k}")
        bound = (rf"$\mathcal{{L}}^{{>{k}}}$" if quantity is None
                 else rf"{quantity}$^{{>{k}}}$")
        ax.set_xlabel(f"{bound} (nats)" if nats else f"{bound} (bits/dim)")
        ax.set_ylabel("density")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ks):]:
        ax.axis("off")
    path = save_png(fig, path)
    plt.close(fig)
    return path
