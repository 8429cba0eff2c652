"""Training curves from a run's metrics.jsonl (matplotlib, consistent style, labelled units)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from biva.evaluation.style import save_png  # noqa: E402
from biva.utils.jsonl import read_jsonl  # noqa: E402


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """ELBO (train and validation) and KL per latent group against steps; returns the PNG."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["elbo"] for r in train], label="train ELBO")
    if valid:
        ax.plot([r["step"] for r in valid], [r["valid_elbo"] for r in valid], "o-",
                label="validation ELBO (EMA)")
    ax.set_xlabel("training step")
    ax.set_ylabel("ELBO (nats per example)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    if train and train[0].get("kl_groups"):
        # Up to 2L - 1 = 29 groups: a 20-colour cycle with line styles keeps them distinct.
        colors = plt.get_cmap("tab20").colors
        for n, g in enumerate(train[0]["kl_groups"]):
            ax.plot([r["step"] for r in train], [max(r["kl_groups"][g], 1e-3) for r in train],
                    label=g, color=colors[n % 20], linestyle=("-", "--")[(n // 20) % 2])
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("training step")
    ax.set_ylabel("KL(q || p) per group (nats)")
    ax.grid(alpha=0.3)
    out = Path(out) if out else run_dir / "figures" / "training_curves.png"
    save_png(fig, out)
    plt.close(fig)
    return out


def plot_valid_vs_cpu(runs: dict[str, str | Path], out: str | Path, key: str = "valid_bpd",
                      ylabel: str = "held-out bits/dim (L_1, EMA)") -> Path:
    """Validation ``key`` against the CPU minutes each run had spent (``cpu_s`` of its
    records), one line per run (label -> run dir); returns the PNG."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for label, run_dir in runs.items():
        valid = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl")
                 if r.get("kind") == "valid" and "cpu_s" in r and key in r]
        ax.plot([r["cpu_s"] / 60 for r in valid], [r[key] for r in valid], "o-", ms=3,
                label=label)
    ax.set_xlabel("CPU minutes (all threads of the training process)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    out = save_png(fig, out)
    plt.close(fig)
    return out
