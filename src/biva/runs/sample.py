"""Samples of a run's model as image files (``biva sample``), and what each layer holds
(``biva sample --from IMAGES``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from biva.config import DataKind
from biva.data import evaluation_split, load_run_data, to_model_input
from biva.data.folders import iter_folder
from biva.evaluation.classification import write_class_samples
from biva.evaluation.generation import write_samples
from biva.evaluation.latent_views import write_latent_views
from biva.runs.loading import load_trained
from biva.utils.atomic import staged_directory
from biva.utils.run_lock import output_lock


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


@dataclass(frozen=True)
class LatentViewSettings:
    """What each layer holds (``biva sample --from IMAGES``): the first ``n`` images of
    ``images`` (a folder of image files or one file, read as :func:`biva.data.read_folder`
    reads it) or of ``split`` ("valid" or "test") of the run's own data set, reconstructed
    keeping the top ``keep`` layers (default L, L-1, ..., 0) with the rest drawn at
    ``temperature``, and interpolated at ``layers`` (default 1 and L) in ``steps`` steps
    between consecutive pairs, the other layers from the first image's posterior means
    (``others="a"``) or from the conditional prior means ("prior"); ``out`` a folder
    (default RUN_DIR/figures/latents, or latents_2, ... when taken), written whole."""

    images: Path | None = None
    split: str | None = None
    n: int = 8
    keep: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    steps: int = 8
    others: str = "a"
    temperature: float = 1.0
    seed: int = 0
    checkpoint: str = "best"
    out: Path | None = None

    def __post_init__(self):
        if (self.images is None) == (self.split is None):
            raise ValueError("give one source of images: a folder (--from IMAGES) or a split "
                             "of the run's data set (--from-split valid|test)")


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


def latent_views_run(run_dir: str | Path, settings: LatentViewSettings, *,
                     device: str | torch.device = "cpu") -> list[Path]:
    """Write the figures of :func:`biva.evaluation.latent_views.write_latent_views` for the
    run's EMA model and ``settings.images``; returns the files written."""
    s = settings
    model, cfg, _ = load_trained(run_dir, s.checkpoint, device)
    if hasattr(model, "class_grid"):
        raise ValueError(f"{run_dir}: --from needs an image model of an unsupervised family "
                         "(the semi-supervised posterior reads a class)")
    kind = DataKind.for_likelihood(cfg.model.likelihood)
    if s.images is not None:
        # Only the first n files are read (the folder may hold many more).
        files, raw = next(iter_folder(s.images, cfg, seed=s.seed, batch=s.n))
        sources = [str(f) for f in files]
    else:
        split = evaluation_split(load_run_data(cfg), s.split, seed=cfg.train.seed)
        raw = split.images[:s.n]
        sources = [f"{cfg.data.name} {s.split} image {i}" for i in range(len(raw))]
    x = to_model_input(raw, kind, cfg.model.bits).to(device)
    out = s.out or free_path(Path(run_dir) / "figures" / "latents")
    with output_lock(out), staged_directory(out, written_by="biva sample --from") as stage:
        names = write_latent_views(model, x, kind, stage, keeps=s.keep, layers=s.layers,
                                   steps=s.steps, others=s.others, temperature=s.temperature,
                                   seed=s.seed,
                                   sources=sources)
    return [out / p.name for p in names]
