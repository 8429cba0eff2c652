"""Samples of a run's model as image files (``biva sample``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from biva.config import DataKind
from biva.evaluation.classification import write_class_samples
from biva.evaluation.generation import write_samples
from biva.runs.loading import load_trained


@dataclass(frozen=True)
class SampleSettings:
    """``n`` samples at each of ``temperatures`` (one row block each, the same latent noise);
    ``layer_temperatures`` (one per stochastic layer, layer 1 first) scaled by each
    temperature; ``mode`` "mean" or "sample" of p(x|z); ``out`` the PNG (default
    RUN_DIR/figures/samples.png, or samples_2.png, ... when taken: an earlier figure is never
    replaced); ``per_class`` samples a class for a semi-supervised run."""

    n: int = 64
    temperatures: tuple[float, ...] = (1.0,)
    layer_temperatures: tuple[float, ...] | None = None
    mode: str = "mean"
    seed: int = 0
    checkpoint: str = "best"
    out: Path | None = None
    per_class: int = 10


def free_path(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>_2<suffix>``, ``_3``, ..."""
    i = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
        i += 1
    return candidate


def sample_run(run_dir: str | Path, settings: SampleSettings = SampleSettings(), *,
               device: str | torch.device = "cpu") -> list[Path]:
    """Write the samples of the run's EMA model; returns the PNG files written (a second one,
    ``<out>_by_class.png``, one row a class, for a semi-supervised run)."""
    s = settings
    model, cfg, _ = load_trained(run_dir, s.checkpoint, device)
    kind = DataKind.for_likelihood(cfg.model.likelihood)
    layer = list(s.layer_temperatures) if s.layer_temperatures else None
    # An explicit out is the user's to replace; the default never replaces an earlier figure
    # (biva run's samples.png, an earlier biva sample).
    out = s.out or free_path(Path(run_dir) / "figures" / "samples.png")
    written = [write_samples(model, kind, out, s.n, list(s.temperatures), s.seed, s.mode, layer)]
    if hasattr(model, "class_grid"):  # semi-supervised run: one row per class
        t = [s.temperatures[0] * lt for lt in layer] if layer else s.temperatures[0]
        written.append(write_class_samples(model, kind, out.with_name(out.stem + "_by_class.png"),
                                           s.per_class, t, s.seed, s.mode))
    return written
