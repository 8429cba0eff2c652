"""Load a trained model (EMA weights) from a run directory or a checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from biva.config.run import RunConfig, read_run_config, resolve_config
from biva.models import LatentHierarchy, build_hierarchy
from biva.utils.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from biva.utils.config_io import to_dict


def find_checkpoint(run_dir: str | Path, which: str = "best", *, strict: bool = False) -> Path:
    """``which``: "best" (the best-validation weights), "latest", or a path.

    A run with no ``best/`` yet (stopped before its first validation) falls back to its
    latest checkpoint, and a line on stderr says so; with ``strict`` it is refused instead,
    naming ``--checkpoint latest`` (an evaluation that reports test numbers should not take a
    stray checkpoint without a word)."""
    run_dir = Path(run_dir)
    if which not in ("best", "latest"):
        path = Path(which)
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint")
        return path
    best = run_dir / "checkpoints" / "best"
    if which == "best" and (best / "meta.json").is_file():
        return best
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise CheckpointError(f"{run_dir}: no checkpoint found (expected {run_dir}/checkpoints/"
                              f"step_*/ or best/); has the run saved one yet?")
    if which == "best":
        why = (f"{run_dir} has no best-validation checkpoint (checkpoints/best/: the run "
               f"stopped before its first validation)")
        if strict:
            raise CheckpointError(f"{why}; its latest is {latest.name}: pass --checkpoint "
                                  "latest to use it, or train the run further")
        print(f"note: {why}: using its latest, {latest.name}", file=sys.stderr)
    return latest


def build_model(cfg: RunConfig, run_dir: str | Path) -> LatentHierarchy:
    """The untrained model of the run in ``run_dir`` with config ``cfg``: ``cfg.model``, made
    semi-supervised when ``data.labels_per_class > 0`` (then ``run_dir/labelled.json`` gives
    the objective's weights). Load weights with :func:`load_trained` instead to evaluate."""
    # Semi-supervised runs (data.labels_per_class > 0) store their class count in the config,
    # and alpha and the split sizes (the paper objective's weights) in labelled.json.
    if cfg.data.labels_per_class <= 0:
        return build_hierarchy(cfg.model)
    if not cfg.data.num_classes:
        raise ValueError("semi-supervised run without data.num_classes in its config.json")
    split = {}
    path = Path(run_dir) / "labelled.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        split = {k: saved[k] for k in ("alpha", "n_labelled", "n_unlabelled") if k in saved}
    elif cfg.train.ssl_objective == "paper":
        raise FileNotFoundError(f"{path}: no such file; a run of the 'paper' objective needs "
                                f"its split sizes (n_labelled, n_unlabelled) from it")
    return build_hierarchy(cfg.model, cfg.data.num_classes, objective=cfg.train.ssl_objective,
                           **split)


def shape_mismatches(cfg: RunConfig, run_dir: str | Path,
                     shapes: dict[str, tuple[int, ...]]) -> str:
    """Which tensors of the model ``cfg`` describes differ in shape from ``shapes`` (a
    checkpoint's or a weights file's): '' when none. The model is built on the meta device,
    so a config edited to a huge model costs no memory before it is refused."""
    with torch.device("meta"):
        model = build_model(cfg, run_dir)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = model.upgrade_state_dict(shapes)   # an older checkpoint's names
    bad = sorted(k for k in set(want) | set(shapes) if want.get(k) != shapes.get(k))
    shown = "; ".join(f"{k}: config {want.get(k)}, weights {shapes.get(k)}" for k in bad[:3])
    return f"{len(bad)} tensors ({shown})" if bad else ""


def _build_inputs(cfg: RunConfig) -> dict:
    """Every field :func:`build_model` reads (the parameters' shapes follow from these)."""
    return {"model": to_dict(cfg.model), "num_classes": cfg.data.num_classes,
            "labels_per_class": cfg.data.labels_per_class,
            "ssl_objective": cfg.train.ssl_objective}


def same_build(cfg: RunConfig, saved: object) -> bool:
    """Whether ``saved`` (the config dict a checkpoint was written with, or None) describes
    the same model as ``cfg``: then the checkpoint's tensors are that model's, and the
    meta-device comparison (seconds on its first use in a process) can be skipped."""
    if not isinstance(saved, dict):
        return False
    try:
        # resolve_config copies what it changes: the checkpoint's state is left as it is.
        return _build_inputs(resolve_config(saved, warn=False)) == _build_inputs(cfg)
    except (ValueError, TypeError, KeyError):
        return False


def load_trained(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu",
                 *, strict: bool = False) -> tuple[LatentHierarchy, RunConfig, dict]:
    """The evaluation model (EMA weights) of a run, its config and the checkpoint's state.

    The data-dependent init is part of the saved weights and is never re-run here.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir / "config.json")
    path = find_checkpoint(run_dir, which, strict=strict)
    tensors, state = load_checkpoint(path, map_location=device)
    weights = tensors["ema"] if "ema" in tensors else tensors["model"]
    bad = "" if same_build(cfg, state.get("config")) else shape_mismatches(
        cfg, run_dir, {k: tuple(v.shape) for k, v in weights.items()})
    if bad:
        raise ValueError(f"{run_dir / 'config.json'} and {path} disagree on {bad}: the config "
                         "was edited after training; restore it (or start a new run with "
                         "--init-from from a config of the same architecture)")
    model = build_model(cfg, run_dir).to(device)
    model.load_state_dict(weights)
    model.eval()
    state = {**state, "checkpoint": str(path)}
    return model, cfg, state
