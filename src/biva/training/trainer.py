"""The training loop: paper recipe, safe updates, atomic checkpoints, exact resume.

A run directory holds::

    config.json          resolved RunConfig
    metrics.jsonl        one JSON record per log interval / evaluation
    checkpoints/step_*/  model, EMA, optimizer, RNG and step (safetensors + JSON)
    checkpoints/best/    EMA weights with the best validation ELBO (never the test set)
    tensorboard/         event files
    figures/             images written by evaluation and sampling

Resuming loads the latest checkpoint and replays the data stream from the same position:
batches are a pure function of (seed, epoch, batch index), every other random draw comes from
the global torch RNG whose state the checkpoint restores, so an interrupted-and-resumed run ends
with bit-identical parameters on CPU.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from biva.config.run import (
    BUDGET_FIELDS,
    RunConfig,
    extend_budget,
    read_run_config,
    resolve_config,
)
from biva.data import (
    DatasetSplits,
    epoch_batches,
    evaluation_split,
    load_run_data,
    num_batches,
    to_model_input,
)
from biva.models import LatentHierarchy, build_hierarchy
from biva.nn.blocks import use_channels_last, use_grad_checkpointing
from biva.objectives import bits_per_dim
from biva.objectives.splits import validation_statistics
from biva.training.distributed import (
    any_rank,
    average_across_ranks,
    broadcast_module_,
    seed_rank_step,
)
from biva.training.ema import EMA
from biva.training.memory import check_step_fits, describe_fields
from biva.training.precision import resolve_amp
from biva.training.schedule import free_bits, kl_weight, learning_rate
from biva.utils.atomic import atomic_write_json, is_disk_full
from biva.utils.checkpoint import (
    CheckpointError,
    flatten_state_dict,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    unflatten_state_dict,
)
from biva.utils.config_io import load_config_file, save_config, to_dict
from biva.utils.device import resolve_device
from biva.utils.images import save_grid, to_display
from biva.utils.jsonl import append_jsonl, truncate_jsonl_after_step
from biva.utils.rng import capture_rng_state, restore_rng_state, seed_everything
from biva.utils.run_lock import lock_run_dir, unlock_run_dir


def write_split_lists(data: DatasetSplits, path: Path) -> Path | None:
    """Which files (or npz rows) went to train / valid / test, as JSON; None if unknown."""
    splits = {s: getattr(data, s).sources for s in ("train", "valid", "test")}
    if any(v is None for v in splits.values()):
        return None
    atomic_write_json(path, {"dataset": data.name, **{f"n_{s}": len(v) for s, v in
                                                       splits.items()}, **splits})
    return path


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary, after writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint written; "
                         f"continue with `biva train --resume {run_dir}`")


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


# Fields that may differ between config.json and the checkpoint being resumed: how long to
# train, and where and how the run executes; everything else decides what is trained.
RESUMABLE_CHANGES = (*BUDGET_FIELDS, "train.device", "train.threads", "train.progress",
                     "data.root", "data.download", "name")


def _flat_fields(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_fields(value, name + "."))
        else:
            out[name] = value
    return out


def _check_config_unchanged(cfg: RunConfig, state: dict, path: Path, run_dir: Path) -> None:
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


class TrainingStalled(RuntimeError):
    """Too many updates in a row were skipped (non-finite or exploding): the run diverged."""


def _check_training_state(tensors: dict, state: dict, path: Path) -> None:
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


class Trainer:
    """Train the model a :class:`RunConfig` describes (:class:`~biva.models.HierarchicalVAE`
    or :class:`~biva.models.TopDownVAE`) in ``run_dir``.

    ``Trainer(cfg, run_dir).fit()`` starts a run; ``Trainer.resume(run_dir).fit()`` continues
    the latest checkpoint of one. Under ``torchrun`` every rank trains on its share of each
    batch; rank 0 alone writes files.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, data: DatasetSplits | None = None,
                 resume: bool = False, stop_after: int | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        tc = cfg.train
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.amp, why = resolve_amp(tc.amp, self.device)
        if self.rank == 0:
            print(f"precision: {'bf16 autocast' if self.amp == 'bf16' else 'fp32'} ({why})")
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(self.device)
        self.stop_after = stop_after
        self.data = data if data is not None else load_run_data(cfg)
        self._check_data_fits_model()
        self.valid = evaluation_split(self.data, "valid", seed=tc.seed)
        self.dynamic = self.data.binarization == "dynamic"
        if tc.batch_size % self.world:
            raise ValueError(f"train.batch_size={tc.batch_size} (the global batch) must be a "
                             f"multiple of the {self.world} ranks")
        # One step consumes one global batch (each rank its slice of it, see _batches).
        self.steps_per_epoch = num_batches(len(self.data.train), tc.batch_size, True)
        if self.steps_per_epoch == 0:
            n = len(self.data.train)
            raise ValueError(f"train.batch_size={tc.batch_size} exceeds the {n} training "
                             f"examples: pass --set train.batch_size={n} (or fewer)")

        # Refuse, naming the fields, a model that cannot fit before allocating any of it.
        check_step_fits(self._build_model, tuple(cfg.model.input_shape),
                        tc.batch_size // self.world, self.device, describe_fields(cfg))
        seed_everything(tc.seed)
        self.model = self._build_model().to(self.device)
        # Set before the EMA copy is made, which inherits them.
        use_channels_last(self.model, tc.channels_last)
        use_grad_checkpointing(self.model, tc.grad_checkpointing)
        self._compiled = None
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=tc.lr,
                                            betas=tuple(tc.adam_betas))
        self.step = 0
        self.skipped = 0
        self.consecutive_skips = 0
        # Recent finite gradient norms (pre-clip): the data-scaled skip threshold (auto).
        self.grad_norms: deque[float] = deque(maxlen=tc.skip_window)
        self.best_valid = -math.inf
        self.ema: EMA | None = None
        self.bad_streak = 0     # skipped or forced updates in a row (train.max_bad_steps)
        # Process CPU seconds spent on this run (all threads; carried over resumes).
        self.cpu_offset, self.cpu_start = 0.0, time.process_time()
        self._signal: int | None = None
        self.stop_reason = ""                 # why the last fit() stopped, in words
        self._saved_step: int | None = None   # the step of the newest checkpoint written
        # Images and wall seconds of this fit() (validations included): its mean throughput.
        self.session_images, self.session_seconds = 0, 0.0
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # One writer per run directory; a killed writer's lock is gone with its process,
            # and only then are its half-written checkpoint directories garbage.
            with disk_full_as_error(self.run_dir):
                lock_run_dir(self.run_dir)
            for stale, action in remove_stale_temporaries(self.run_dir):
                print(f"{stale.relative_to(self.run_dir)}: left by a killed run; {action}")
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if not resume and latest_checkpoint(self.run_dir) is not None:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints: resume it with "
                                  f"`biva train --resume {self.run_dir}` or pick a new run dir")
        if ckpt is not None:
            self._load(ckpt)
        else:
            if resume and self.rank == 0:
                print(f"no checkpoint in {self.run_dir}: starting from step 0")
            self._initialize()
        if self.rank == 0:
            with disk_full_as_error(self.run_dir):
                save_config(cfg, self.run_dir / "config.json")
                write_split_lists(self.data, self.run_dir / "data_split.json")
                if ckpt is not None:
                    truncate_jsonl_after_step(self.metrics_path, self.step)
        self.ddp = None
        if self.distributed:
            # DDP copies rank 0's parameters and buffers to every rank once, here; the only
            # buffer (`initialized`) never changes in training, so no per-step broadcast.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
            broadcast_module_(self.ema.model)  # the EMA starts from the same weights too

    # ------------------------------------------------------------------ set-up
    @classmethod
    def resume(cls, run_dir: str | Path, budget: Sequence[str] = (), **kwargs) -> Trainer:
        """Continue the run in ``run_dir`` from its latest checkpoint (or from scratch).

        ``budget``: ``KEY=VALUE`` overrides of the budget fields only (``BUDGET_FIELDS``), to
        train a finished run further; they are saved to its config.json."""

        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; is {run_dir} a biva run directory?")
        raw = load_config_file(path)
        cfg = extend_budget(raw, list(budget), path) if budget else read_run_config(path)
        return cls(cfg, run_dir, resume=True, **kwargs)

    @property
    def metrics_path(self) -> Path:
        """RUN_DIR/metrics.jsonl: one JSON record per log interval and per validation."""
        return self.run_dir / "metrics.jsonl"

    def _build_model(self) -> LatentHierarchy:
        """The model this trainer trains (subclasses build variants, e.g. semi-supervised)."""
        return build_hierarchy(self.cfg.model)

    def _check_data_fits_model(self) -> None:
        shape, want = tuple(self.data.shape), tuple(self.cfg.model.input_shape)
        if shape != want:
            raise ValueError(f"dataset {self.data.name!r} has images of shape {shape} but "
                             f"model.input_shape is {want}")
        lik = self.cfg.model.likelihood
        expected = {"binary": "bernoulli", "8bit": "discretized_logistic"}[self.data.kind]
        if lik != expected:
            raise ValueError(f"dataset {self.data.name!r} holds {self.data.kind} data, which "
                             f"needs model.likelihood={expected!r}; found {lik!r}")

    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.data.kind, self.cfg.model.bits).to(self.device)

    def _init_split(self):
        """The images the data-dependent init draws its batch from."""
        return self.data.train

    def _initialize(self) -> None:
        tc = self.cfg.train
        if tc.init_from:
            self._initialize_from(Path(tc.init_from))
            return
        split = self._init_split()
        n = min(tc.init_batch, len(split))
        images, _ = next(epoch_batches(split, n, epoch=0, seed=tc.seed + 1,
                                       dynamic_binarize=self.dynamic))
        self.model.initialize(self._batch(images))
        # The EMA starts from the initialized weights (after, never before, the init).
        self.ema = EMA(self.model, tc.ema_decay, warmup=tc.ema_warmup)

    def _initialize_from(self, path: Path) -> None:
        """Start from another run's checkpoint (train.init_from): its model and EMA weights,
        a fresh optimizer at step 0. A checkpoint of another architecture is refused."""
        tensors, _ = load_checkpoint(path, map_location=self.device)
        weights = tensors.get("model")
        if weights is None:
            raise ValueError(f"train.init_from={path}: holds no model weights")
        mine = self.model.state_dict()
        missing = sorted(set(mine) - set(weights))
        bad = [k for k in mine if k in weights and weights[k].shape != mine[k].shape]
        if missing or bad:
            first = (f"{bad[0]}: {tuple(weights[bad[0]].shape)} there, "
                     f"{tuple(mine[bad[0]].shape)} here" if bad else f"{missing[0]} missing")
            raise ValueError(
                f"train.init_from={path}: the checkpoint's model does not have this config's "
                f"architecture ({len(bad)} tensors of another shape, {len(missing)} missing; "
                f"{first}); init_from keeps the model.* fields of the run it comes from")
        self.model.load_state_dict(weights)
        self.ema = EMA(self.model, self.cfg.train.ema_decay, warmup=self.cfg.train.ema_warmup)
        if "ema" in tensors:
            self.ema.load_state_dict(tensors["ema"])
        if self.rank == 0:
            print(f"weights from {path} (train.init_from); optimizer and step start afresh")

    def _load(self, path: Path) -> None:
        tensors, state = load_checkpoint(path, map_location=self.device)
        _check_training_state(tensors, state, path)
        _check_config_unchanged(self.cfg, state, path, self.run_dir)
        self.model.load_state_dict(tensors["model"])
        self.ema = EMA(self.model, self.cfg.train.ema_decay, warmup=self.cfg.train.ema_warmup)
        self.ema.load_state_dict(tensors["ema"])
        self.ema.updates = state.get("ema_updates", state["step"] - state["skipped"])

        self.optimizer.load_state_dict(
            unflatten_state_dict(tensors["optimizer"], state["optimizer"]))
        restore_rng_state(tensors.get("rng", {}), state["rng"])
        self.step = self._saved_step = state["step"]
        self.skipped = state["skipped"]
        self.consecutive_skips = state.get("consecutive_skips", 0)
        self.bad_streak = state.get("bad_streak", 0)
        self.cpu_offset = float(state.get("cpu_s", 0.0))
        self.grad_norms.extend(state.get("grad_norms", []))
        self.best_valid = state.get("best_valid", -math.inf) or -math.inf
        if self.rank == 0:
            print(f"resumed {self.run_dir} at step {self.step} from {path.name}")

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 only); returns its path.

        Under torchrun every rank calls it and waits at a barrier until rank 0 has written the
        checkpoint, so no rank exits (or is killed) ahead of a half-written one.
        """
        path = self._write_checkpoint() if self.rank == 0 else None
        if self.distributed:
            dist.barrier()
        self._saved_step = self.step
        return path

    def _write_checkpoint(self) -> Path:

        opt_tensors, opt_skeleton = flatten_state_dict(self.optimizer.state_dict())
        rng_tensors, rng_meta = capture_rng_state()
        state = {"step": self.step, "skipped": self.skipped,
                 "consecutive_skips": self.consecutive_skips, "ema_updates": self.ema.updates,
                 "bad_streak": self.bad_streak, "cpu_s": self.cpu_seconds,
                 "grad_norms": list(self.grad_norms),
                 "best_valid": self.best_valid if math.isfinite(self.best_valid) else None,
                 "optimizer": opt_skeleton, "rng": rng_meta, "config": to_dict(self.cfg)}
        path = self.run_dir / "checkpoints" / f"step_{self.step:09d}"
        save_checkpoint(path, tensors={"model": self.model.state_dict(),
                                       "ema": self.ema.state_dict(), "optimizer": opt_tensors,
                                       "rng": rng_tensors}, state=state)
        prune_checkpoints(self.run_dir, self.cfg.train.keep_last,
                          protect=(self.run_dir / "checkpoints" / "best",))
        return path

    def _save_best(self, value: float) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.run_dir / "checkpoints" / "best",
                        tensors={"model": self.ema.state_dict()},
                        state={"step": self.step, "valid_elbo": value,
                               "config": to_dict(self.cfg)})

    # ------------------------------------------------------------------ the loop
    def _batches(self):
        """Training batches from the current step on, epoch after epoch (each rank its share)."""
        tc = self.cfg.train
        epoch, start = divmod(self.step, self.steps_per_epoch)
        per_rank = tc.batch_size // self.world if self.distributed else tc.batch_size
        while True:
            for images, _ in epoch_batches(self.data.train, tc.batch_size, epoch=epoch,
                                           seed=tc.seed, dynamic_binarize=self.dynamic,
                                           start_batch=start):
                if self.distributed:
                    images = images[self.rank * per_rank:(self.rank + 1) * per_rank]
                yield epoch, images
            epoch, start = epoch + 1, 0

    def _step_module(self) -> torch.nn.Module:
        """What the training step calls: the (DDP-wrapped) model, compiled if train.compile."""
        model = self.ddp if self.ddp is not None else self.model
        if not self.cfg.train.compile:
            return model
        if self._compiled is None:
            self._compiled = torch.compile(model)  # compiles on its first call
        return self._compiled

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on x (B, C, H, W); returns detached per-step statistics (tensors)."""
        tc = self.cfg.train
        lr = learning_rate(tc, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.distributed:
            seed_rank_step(tc.seed, self.rank, self.step)
        model = self._step_module()
        model.train()
        kl_w = kl_weight(tc, self.step)
        if tc.compile:  # a tensor, not a constant baked into the graph: no recompile per step
            kl_w = torch.tensor(kl_w, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            extra = {"spectral_reg": tc.spectral_reg} if tc.spectral_reg else {}
            out = model(x, free_bits=free_bits(tc, self.step), kl_weight=kl_w, **extra)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip,
                                                   error_if_nonfinite=False)
        # Skip non-finite or exploding updates. This is the step's one host sync: the flag and
        # the norm travel in one tensor (one all-reduce across ranks, so a skip on one rank is
        # a skip on all, then one .tolist()). On CPU it costs nothing (ops run synchronously);
        # on CUDA the host waits for the step's kernels before it queues the optimizer's.
        loss = out.loss.detach()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        flags = torch.stack([(~finite).float(),
                             torch.where(finite, grad_norm, 0.0).float()])
        if self.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite_flag, norm = flags.tolist()
        nonfinite = nonfinite_flag > 0
        exploding = norm > self.skip_threshold   # before this norm joins the history
        skip = nonfinite or exploding
        if not nonfinite:
            self.grad_norms.append(norm)
        if skip and not nonfinite and self.consecutive_skips >= tc.max_consecutive_skips:
            # Guard against skipping forever: after a run of skips, take the (clipped) update.
            skip = False
        forced = not skip and exploding
        self.bad_streak = self.bad_streak + 1 if skip or forced else 0
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive_skips += 1
        else:
            self.optimizer.step()
            self.ema.update(self.model)
            self.consecutive_skips = 0
        kl = out.kl.detach()
        return {"loss": out.loss.detach(), "elbo": out.elbo.detach().mean(),
                "log_px": out.log_px.detach().mean(), "kl": kl.sum(1).mean(),
                "kl_groups": kl.mean(0), "grad_norm": grad_norm.detach(),
                "skipped": torch.tensor(float(skip)), "lr": torch.tensor(lr)}

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds (all threads of this process) spent on the run, over its resumes."""
        return self.cpu_offset + time.process_time() - self.cpu_start

    @property
    def skip_threshold(self) -> float:
        """The gradient norm above which an update is skipped now (inf: none is)."""
        tc = self.cfg.train
        if tc.skip_threshold != "auto":
            return float(tc.skip_threshold)
        # No skipping in the lr warm-up: there the norms grow by orders of magnitude as the
        # likelihood sharpens (860 -> 56,000 in 150 steps on 32x32 photos) and lr is small.
        if len(self.grad_norms) < tc.skip_min_history or self.step < tc.warmup_steps:
            return math.inf
        return tc.skip_factor * statistics.median(self.grad_norms)

    def fit(self) -> dict:
        """Train until ``train.steps``; returns the last logged record.

        Stops early (with a checkpoint) at ``train.max_minutes``, ``stop_after``, or a
        SIGINT/SIGTERM (raising :class:`TrainingInterrupted`); raises :class:`TrainingStalled`
        on a divergence and :class:`DiskFull` when the run directory's disk fills up.
        """
        writer = self._tensorboard()
        progress = self._progress()
        if self.rank == 0:
            # On its own line, flushed, before any bar: a bar's first line ran into it.
            print(f"samples at each validation: {self.run_dir / 'figures' / 'samples_latest.png'}",
                  flush=True)
        started = time.perf_counter()
        if self.rank == 0:
            lock_run_dir(self.run_dir)
        restore_handlers = self._catch_stop_signals()
        try:
            with disk_full_as_error(self.run_dir):
                return self._loop(progress, writer, started)
        finally:
            restore_handlers()
            if progress is not None:
                progress.close()
            if writer is not None:
                writer.close()
            if self.rank == 0:
                unlock_run_dir(self.run_dir)

    def _loop(self, progress, writer, started: float) -> dict:
        """The training loop of :meth:`fit`: steps, logs, validations, checkpoints, stops."""
        tc = self.cfg.train
        window: list[dict[str, torch.Tensor]] = []
        t0, images_seen, last = time.perf_counter(), 0, {}
        loop_start, self.session_images = time.perf_counter(), 0
        stream = self._batches()
        self.stop_reason = f"train.steps = {tc.steps} were reached"
        while self.step < tc.steps:
            if any_rank(self._signal is not None, self.device) if self.distributed \
                    else self._signal is not None:
                self.save()
                raise TrainingInterrupted(self._signal or signal.SIGTERM, self.step,
                                          self.run_dir)
            over_wall = tc.max_minutes > 0 and time.perf_counter() - started > 60 * tc.max_minutes
            over_cpu = tc.max_cpu_minutes > 0 and self.cpu_seconds > 60 * tc.max_cpu_minutes
            if (tc.max_minutes > 0 or tc.max_cpu_minutes > 0) and any_rank(over_wall or over_cpu,
                                                                          self.device):
                if self.rank == 0:
                    budget = (f"CPU budget of {tc.max_cpu_minutes} min" if over_cpu
                              else f"time budget of {tc.max_minutes} min")
                    self.stop_reason = f"the {budget} was reached"
                # The extra evaluation must not shift the training RNG stream, or the
                # resumed run would differ from an uninterrupted one.
                rng = capture_rng_state()
                last = {**last, **self._validate(writer)}
                restore_rng_state(*rng)
                self.save()
                break
            epoch, images = next(stream)
            stats = self.train_step(self._batch(images))
            self.step += 1
            window.append(stats)
            images_seen += images.shape[0] * self.world
            self.session_images += images.shape[0] * self.world
            self.session_seconds = time.perf_counter() - loop_start
            if progress is not None:
                self._advance(progress, time.perf_counter() - started)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                elapsed = time.perf_counter() - t0
                last = self._log(window, epoch, images_seen / max(elapsed, 1e-9), writer,
                                 progress)
                window, t0, images_seen = [], time.perf_counter(), 0
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                last = {**last, **self._validate(writer)}
                if progress is not None and "valid_bpd" in last:
                    self.progress_info["valid_bpd"] = f"{last['valid_bpd']:.3f}"
                    progress.set_postfix(self.progress_info, refresh=False)
            if self.bad_streak >= tc.max_bad_steps:
                raise TrainingStalled(self._stall_message())
            if self.step % tc.checkpoint_every == 0 or self.step == tc.steps:
                # A stretch of skipped updates may be a divergence: keep the checkpoints
                # from before it rather than rotate them out for the stalled state.
                if self.bad_streak < tc.max_consecutive_skips or self.step == tc.steps:
                    self.save()
            if self.stop_after is not None and self.step >= self.stop_after:
                # As if interrupted: a checkpoint of this step, so --resume continues here
                # (every rank decides alike: save() is collective under torchrun).
                if self._saved_step != self.step:
                    self.save()
                self.stop_reason = f"--stop-after {self.stop_after}"
                break
        return last

    def _catch_stop_signals(self):
        """Turn SIGINT/SIGTERM into a stop at the next step boundary (with a checkpoint); a
        second signal acts at once. Returns the function that restores the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            self._signal = signum
            signal.signal(signum, previous[signum])
            if self.rank == 0:
                print(f"\n{signal.Signals(signum).name}: stopping after this step with a "
                      "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

        for s in previous:
            signal.signal(s, on_signal)

        def restore():
            for s, handler in previous.items():
                signal.signal(s, handler)
        return restore

    def _stall_message(self) -> str:
        tc = self.cfg.train
        latest = latest_checkpoint(self.run_dir)
        kept = (f"The last checkpoint before it is {latest}" if latest is not None
                else "No checkpoint was written")
        return (f"training stalled: {self.bad_streak} updates in a row were skipped or forced "
                f"(non-finite or exploding gradients) up to step {self.step}; the run has "
                f"diverged. {kept}. Lower train.lr (now {tc.lr:g}) or train.grad_clip (now "
                f"{tc.grad_clip:g}) and resume or restart")

    def _validate(self, writer) -> dict:
        """:meth:`evaluate` on rank 0 alone: every rank holds the same EMA weights."""
        return self.evaluate(writer) if self.rank == 0 else {}

    def _log(self, window, epoch, images_per_s, writer, progress) -> dict:
        mean = {k: torch.stack([w[k] for w in window]).mean(0) for k in window[0]}
        mean = average_across_ranks(mean, self.device)  # each rank saw its own slice of the batches
        groups = self.model.group_names
        kl_groups = mean.pop("kl_groups").tolist()
        # n_steps: the steps this record averages (fewer than log_every right after a resume).
        rec = {"kind": "train", "step": self.step, "epoch": epoch, "n_steps": len(window),
               **{k: float(v) for k, v in mean.items()},
               "skipped_total": self.skipped, "images_per_s": images_per_s, "amp": self.amp,
               "skip_threshold": self.skip_threshold,
               "free_bits": free_bits(self.cfg.train, self.step - 1),
               "kl_weight": kl_weight(self.cfg.train, self.step - 1),
               "kl_groups": dict(zip(groups, kl_groups, strict=True)), "time": time.time(),
               "cpu_s": self.cpu_seconds}
        if self.rank == 0:
            append_jsonl(self.metrics_path, rec)
            if writer is not None:
                for k in ("loss", "elbo", "log_px", "kl", "grad_norm", "lr", "images_per_s"):
                    writer.add_scalar(f"train/{k}", rec[k], self.step)
                writer.add_scalar("train/skipped_total", self.skipped, self.step)
                for g, v in rec["kl_groups"].items():
                    writer.add_scalar(f"kl/{g}", v, self.step)
            if progress is not None:
                # What a user reads: the training ELBO per image in bits/dim (8-bit images) or
                # nats (binary ones), not the loss's sum over a batch.
                dims = math.prod(self.cfg.model.input_shape)
                elbo = (f"{float(bits_per_dim(rec['elbo'], dims)):.3f} bpd"
                        if self.data.kind == "8bit" else f"{-rec['elbo']:.2f} nats")
                self.progress_info.update(step=self.step, train_elbo=elbo,
                                          img_s=f"{images_per_s:.1f}", skip=self.skipped)
                progress.set_postfix(self.progress_info, refresh=False)
        return rec

    def evaluate(self, writer=None) -> dict:
        """Validation ELBO (L_1, nats and bits/dim), log p(x|z) and KL per group (nats) of the
        EMA model; keeps the best checkpoint."""

        tc = self.cfg.train
        # One pass gives the ELBO (bit-identical to validation_elbo) and its two terms.
        stats = validation_statistics(self.ema.model, self.valid, self.data.kind,
                                      self.cfg.model.bits, batch_size=self.cfg.eval.batch_size,
                                      device=self.device, max_batches=tc.eval_batches or None)
        elbo = stats["elbo"]
        dims = math.prod(self.cfg.model.input_shape)
        rec = {"kind": "valid", "step": self.step, "valid_elbo": elbo,
               "valid_bpd": float(bits_per_dim(elbo, dims)), "valid_log_px": stats["log_px"],
               "valid_kl_groups": stats["kl_groups"], "time": time.time(),
               "cpu_s": self.cpu_seconds}
        if elbo > self.best_valid:
            self.best_valid = elbo
            self._save_best(elbo)
        rec["best_valid_elbo"] = self.best_valid
        if self.rank == 0:
            append_jsonl(self.metrics_path, rec)
            samples = self.ema.model.sample(16, generator=torch.Generator(
                device=self.device).manual_seed(0))
            save_grid(samples, self.run_dir / "figures" / "samples_latest.png",
                      kind=self.data.kind, nrow=8)
            if writer is not None:
                writer.add_scalar("valid/elbo", elbo, self.step)
                writer.add_images("samples", to_display(samples, self.data.kind), self.step)
        return rec

    def _tensorboard(self):
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but never let logging stop a run
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)

    def _progress(self):
        """A bar over the time budget (its ETA is the budget's end) when train.max_minutes is
        set, else over the steps; the postfix carries the step and the last valid bits/dim."""
        if self.rank != 0 or not self.cfg.train.progress:
            return None
        from tqdm import tqdm

        tc = self.cfg.train
        self.progress_info: dict = {}
        if tc.max_minutes > 0:
            return tqdm(total=round(60 * tc.max_minutes), desc=f"{self.cfg.name} (time budget)",
                        unit="s", dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {elapsed} elapsed, {remaining} left"
                                   "{postfix}")
        if tc.max_cpu_minutes > 0:
            # Over the CPU budget (CPU seconds of the run, resumes included), not the steps:
            # a step count of 100,000 would show an ETA of a day for a one-hour budget.
            # The ETA is wall time: the CPU budget at the rate this run gets CPU time.
            return tqdm(total=round(60 * tc.max_cpu_minutes), initial=int(self.cpu_seconds),
                        desc=f"{self.cfg.name} (CPU budget)", unit="cpu-s",
                        dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total} CPU-s, {elapsed} elapsed, "
                                   "~{remaining} left{postfix}")
        return tqdm(total=tc.steps, initial=self.step, desc=self.cfg.name,
                    dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

    def _advance(self, progress, elapsed_s: float) -> None:
        tc = self.cfg.train
        if tc.max_minutes > 0:
            progress.update(min(int(elapsed_s), progress.total) - progress.n)
        elif tc.max_cpu_minutes > 0:
            progress.update(min(int(self.cpu_seconds), progress.total) - progress.n)
        else:
            progress.update(1)
