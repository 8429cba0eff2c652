"""A run directory: one writer at a time, its config and split lists, its checkpoints.

::

    config.json          resolved RunConfig
    data_split.json      which files (or npz rows) went to train / valid / test
    metrics.jsonl        one JSON record per log interval / validation
    checkpoints/step_*/  model, EMA, optimizer, RNG and step (safetensors + JSON)
    checkpoints/best/    EMA weights with the best validation figure (never the test set)
    tensorboard/         event files
    figures/             images written at each validation, by evaluation and by sampling

A full disk met by any writer becomes :class:`DiskFull`, whose message says what a checkpoint
needs and how to resume; the checkpoints written before it stay intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import torch

from biva.config.run import BUDGET_FIELDS, RunConfig, resolve_config
from biva.data import DatasetSplits
from biva.utils.atomic import atomic_write_json, is_disk_full
from biva.utils.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from biva.utils.config_io import save_config, to_dict
from biva.utils.jsonl import append_jsonl, truncate_jsonl_after_step
from biva.utils.run_lock import lock_run_dir, unlock_run_dir

# Fields that may differ between config.json and the checkpoint being resumed: how long to
# train, and where and how the run executes; everything else decides what is trained.
RESUMABLE_CHANGES = (*BUDGET_FIELDS, "train.device", "train.threads", "train.progress",
                     "data.root", "data.download", "name")


class DiskFull(RuntimeError):
    """The run directory's file system is full; the checkpoints written before are intact."""


def _disk_full_message(run_dir: Path, err: BaseException) -> str:
    ckpts = list_checkpoints(run_dir)
    need = sum(f.stat().st_size for f in ckpts[-1].iterdir()) if ckpts else 0
    free = shutil.disk_usage(run_dir).free
    filename = getattr(err, "filename", None)
    where = f" writing {filename}" if filename else ""
    code = getattr(err, "errno", None) or errno.ENOSPC
    return (f"no space left on the device of {run_dir}{where} ({os.strerror(code)}): a "
            f"checkpoint needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free. "
            f"The earlier checkpoints are intact: free space (or lower train.keep_last) and "
            f"continue with `biva train --resume {run_dir}`")


@contextlib.contextmanager
def disk_full_as_error(run_dir: Path):
    """Turn a full disk met by any writer inside the block into :class:`DiskFull`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFull(_disk_full_message(run_dir, err)) from err
        raise


def write_split_lists(data: DatasetSplits, path: Path) -> Path | None:
    """Which files (or npz rows) went to train / valid / test, as JSON; None if unknown."""
    splits = {s: getattr(data, s).sources for s in ("train", "valid", "test")}
    if any(v is None for v in splits.values()):
        return None
    atomic_write_json(path, {"dataset": data.name, **{f"n_{s}": len(v) for s, v in
                                                       splits.items()}, **splits})
    return path


def _flat_fields(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_fields(value, name + "."))
        else:
            out[name] = value
    return out


def check_config_unchanged(cfg: RunConfig, state: dict, path: Path, run_dir: Path) -> None:
    """Refuse to resume when config.json no longer describes the checkpoint's run, naming
    the changed fields (an architecture edit would otherwise fail in load_state_dict with a
    page of size mismatches, and an lr edit would silently take effect)."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return  # checkpoints of old biva versions carry no config: nothing to compare
    try:
        before = _flat_fields(to_dict(resolve_config(saved, warn=False)))
    except ValueError:
        before = _flat_fields(saved)
    now = _flat_fields(to_dict(cfg))
    changed = [k for k in sorted(set(before) | set(now))
               if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)]
    if not changed:
        return
    shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise ValueError(
        f"{run_dir / 'config.json'} was edited after the checkpoint {path.name} was written: "
        f"{shown}{more}. A resumed run keeps its config (only {', '.join(BUDGET_FIELDS)} may "
        f"change): restore those fields, or start a new run from these weights with `biva "
        f"train --config {run_dir / 'config.json'} --init-from {path} --run-dir NEW_DIR`")


def check_training_state(tensors: dict, state: dict, path: Path) -> None:
    """A checkpoint the trainer can resume from: the groups and state keys it reads, typed."""
    where = path / "meta.json"
    missing = [g for g in ("model", "ema", "optimizer") if g not in tensors]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no tensor groups {missing}); "
                              "best/ holds evaluation weights only")
    for key in ("step", "skipped"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{where}: state.{key}: expected an int >= 0, found "
                                  f"{value!r}")
    for key in ("optimizer", "rng"):
        if key not in state:
            raise CheckpointError(f"{where}: state.{key} is missing")
    names = state.get("parameters")   # absent in checkpoints written before 2026-12-07
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{where}: state.parameters: expected a list of parameter names, "
                              f"found {type(names).__name__}")


class RunDirectory:
    """The folder of one run. ``writer``: this process writes files (rank 0 under torchrun);
    the others read checkpoints only."""

    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path, self.writer = Path(path), writer

    @property
    def metrics_path(self) -> Path:
        """RUN_DIR/metrics.jsonl: one JSON record per log interval and per validation."""
        return self.path / "metrics.jsonl"

    @property
    def best_path(self) -> Path:
        """RUN_DIR/checkpoints/best: the EMA weights of the best validation figure."""
        return self.path / "checkpoints" / "best"

    def disk_full_as_error(self):
        """A block in which a full disk becomes :class:`DiskFull` naming this run."""
        return disk_full_as_error(self.path)

    def open(self) -> None:
        """Create the folder and take its lock (one writer per run directory). A killed
        writer's lock is gone with its process, and only then are its half-written checkpoint
        directories garbage: they are removed (or set aside), each with a line saying so."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self.disk_full_as_error():
            lock_run_dir(self.path)
        for stale, action in remove_stale_temporaries(self.path):
            print(f"{stale.relative_to(self.path)}: left by a killed run; {action}")

    def lock(self) -> None:
        """Hold the run's lock (again) for a stretch of training."""
        if self.writer:
            lock_run_dir(self.path)

    def unlock(self) -> None:
        """Release the lock taken by :meth:`open` or :meth:`lock`."""
        if self.writer:
            unlock_run_dir(self.path)

    def latest(self) -> Path | None:
        """The newest step checkpoint, or None."""
        return latest_checkpoint(self.path)

    def write_run_files(self, cfg: RunConfig, data: DatasetSplits, resumed_at: int | None):
        """config.json and data_split.json; on a resume, metrics.jsonl cut back to the
        checkpoint's step (records written after it are redone)."""
        if not self.writer:
            return
        with self.disk_full_as_error():
            save_config(cfg, self.path / "config.json")
            write_split_lists(data, self.path / "data_split.json")
            if resumed_at is not None:
                truncate_jsonl_after_step(self.metrics_path, resumed_at)

    def append_metrics(self, record: dict) -> None:
        """One record to metrics.jsonl (writer only)."""
        if self.writer:
            append_jsonl(self.metrics_path, record)

    def load(self, path: Path, cfg: RunConfig, device: torch.device) -> tuple[dict, dict]:
        """A training checkpoint's (tensors, state), refused when it is not one or when
        config.json was edited since it was written."""
        tensors, state = load_checkpoint(path, map_location=device)
        check_training_state(tensors, state, path)
        check_config_unchanged(cfg, state, path, self.path)
        return tensors, state

    def save(self, step: int, tensors: dict, state: dict, keep_last: int) -> Path | None:
        """checkpoints/step_<step>, then the oldest beyond ``keep_last`` removed (best/ kept)."""
        if not self.writer:
            return None
        path = self.path / "checkpoints" / f"step_{step:09d}"
        save_checkpoint(path, tensors=tensors, state=state)
        prune_checkpoints(self.path, keep_last, protect=(self.best_path,))
        return path

    def save_best(self, tensors: dict, state: dict) -> None:
        """checkpoints/best: the weights of the best validation figure so far."""
        if self.writer:
            save_checkpoint(self.best_path, tensors=tensors, state=state)
