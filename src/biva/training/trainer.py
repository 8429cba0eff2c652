"""The trainer of the unsupervised hierarchies: the paper recipe (Adamax, warm-up, free bits,
EMA, skipped updates), on the shared loop (:mod:`~biva.training.loop`) and its parts: the run
directory, the stop rules, the update guard, the callbacks.

Resuming loads the latest checkpoint and replays the data stream from the same position:
batches are a pure function of (seed, epoch, batch index), every other random draw comes from
the global torch RNG whose state the checkpoint restores, so an interrupted-and-resumed run ends
with bit-identical parameters on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from biva.config import DataKind
from biva.config.run import RunConfig, extend_budget, read_run_config
from biva.data import (
    DatasetSplits,
    epoch_batches,
    evaluation_split,
    load_run_data,
    to_model_input,
)
from biva.models import LatentHierarchy, build_hierarchy
from biva.nn.blocks import use_channels_last, use_grad_checkpointing
from biva.objectives import bits_per_dim
from biva.objectives.splits import validation_statistics
from biva.objectives.training import semi_supervised_loss, training_loss
from biva.training.distributed import (
    broadcast_module_,
    seed_rank_step,
)
from biva.training.ema import EMA
from biva.training.loop import TrainingLoop
from biva.training.memory import check_step_fits, describe_fields
from biva.training.run_directory import DiskFull, RunDirectory, write_split_lists
from biva.training.schedule import free_bits, kl_weight, learning_rate
from biva.training.setup import check_data_fits, load_init_weights, place_process
from biva.training.state import Selection, capture_training_state, restore_training_state
from biva.training.stopping import CpuClock, TrainingInterrupted
from biva.training.updates import TrainingStalled, UpdateGuard
from biva.utils.config_io import load_config_file
from biva.utils.rng import seed_everything

__all__ = ["DiskFull", "Selection", "Trainer", "TrainingInterrupted", "TrainingStalled",
           "write_split_lists"]


class Trainer(TrainingLoop):
    """Train the model a :class:`RunConfig` describes (:class:`~biva.models.HierarchicalVAE`
    or :class:`~biva.models.TopDownVAE`) in ``run_dir``.

    ``Trainer(cfg, run_dir).fit()`` starts a run; ``Trainer.resume(run_dir).fit()`` continues
    the latest checkpoint of one. Under ``torchrun`` every rank trains on its share of each
    batch; rank 0 alone writes files. The best checkpoint is chosen on :attr:`selection`.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, data: DatasetSplits | None = None,
                 resume: bool = False, stop_after: int | None = None):
        self.cfg, self.stop_after = cfg, stop_after
        place = place_process(cfg)
        self.distributed, self.rank, self.world = place.distributed, place.rank, place.world
        self.device, self.amp = place.device, place.amp
        self.run = RunDirectory(run_dir, writer=self.rank == 0)
        self.data = data if data is not None else load_run_data(cfg)
        self.steps_per_epoch = check_data_fits(cfg, self.data, self.world)
        self.valid = evaluation_split(self.data, "valid", seed=cfg.train.seed)
        self.dynamic = self.data.binarization == "dynamic"
        self._set_up_model()
        self.step, self.best, self._saved_step = 0, None, None
        self.guard = UpdateGuard(cfg.train)
        self.clock = CpuClock()
        self.stop_reason = ""                 # why the last fit() stopped, in words
        # Images and wall seconds of this fit() (validations included): its mean throughput.
        self.session_images, self.session_seconds = 0, 0.0
        self.run.open()
        ckpt = self.run.latest()
        if ckpt is not None and not resume:
            raise FileExistsError(f"{self.run.path} already holds checkpoints: resume it with "
                                  f"`biva train --resume {self.run.path}` or pick a new run dir")
        if ckpt is not None:
            self._load(ckpt)
        else:
            if resume and self.rank == 0:
                print(f"no checkpoint in {self.run.path}: starting from step 0")
            self._initialize()
        self.run.write_run_files(cfg, self.data, self.step if ckpt is not None else None)
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
    def run_dir(self) -> Path:
        """The run directory's path."""
        return self.run.path

    def _set_up_model(self) -> None:
        """The model (refused, naming the fields, if a step cannot fit) and its optimizer."""
        tc = self.cfg.train
        check_step_fits(self._build_model, tuple(self.cfg.model.input_shape),
                        tc.batch_size // self.world, self.device, describe_fields(self.cfg))
        seed_everything(tc.seed)
        self.model = self._build_model().to(self.device)
        # Set before the EMA copy is made, which inherits them.
        use_channels_last(self.model, tc.channels_last)
        use_grad_checkpointing(self.model, tc.grad_checkpointing)
        self._compiled = None
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=tc.lr,
                                            betas=tuple(tc.adam_betas))
        self.ema: EMA | None = None

    def _build_model(self) -> LatentHierarchy:
        """The model this trainer trains (subclasses build variants, e.g. semi-supervised)."""
        return build_hierarchy(self.cfg.model)

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
        a fresh optimizer at step 0."""
        tensors = load_init_weights(self.model, path, self.device)
        self.ema = EMA(self.model, self.cfg.train.ema_decay, warmup=self.cfg.train.ema_warmup)
        if "ema" in tensors:
            self.ema.load_state_dict(tensors["ema"])
        if self.rank == 0:
            print(f"weights from {path} (train.init_from); optimizer and step start afresh")

    # ------------------------------------------------------------------ checkpoints
    def _load(self, path: Path) -> None:
        restore_training_state(self, *self.run.load(path, self.cfg, self.device))
        self._saved_step = self.step
        if self.rank == 0:
            print(f"resumed {self.run.path} at step {self.step} from {path.name}")

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 only); returns its path.

        Under torchrun every rank calls it and waits at a barrier until rank 0 has written the
        checkpoint, so no rank exits (or is killed) ahead of a half-written one.
        """
        path = None
        if self.rank == 0:
            path = self.run.save(self.step, *capture_training_state(self),
                                 self.cfg.train.keep_last)
        if self.distributed:
            dist.barrier()
        self._saved_step = self.step
        return path

    # ------------------------------------------------------------------ a step
    def _batches(self):
        """(epoch, images, labels) from the current step on, epoch after epoch, each rank its
        share of the global batch; labels are None (unsupervised training)."""
        tc = self.cfg.train
        epoch, start = divmod(self.step, self.steps_per_epoch)
        per_rank = tc.batch_size // self.world if self.distributed else tc.batch_size
        while True:
            for images, _ in epoch_batches(self.data.train, tc.batch_size, epoch=epoch,
                                           seed=tc.seed, dynamic_binarize=self.dynamic,
                                           start_batch=start):
                if self.distributed:
                    images = images[self.rank * per_rank:(self.rank + 1) * per_rank]
                yield epoch, images, None
            epoch, start = epoch + 1, 0

    def _step_module(self) -> torch.nn.Module:
        """What the training step calls: the (DDP-wrapped) model, compiled if train.compile."""
        model = self.ddp if self.ddp is not None else self.model
        if not self.cfg.train.compile:
            return model
        if self._compiled is None:
            self._compiled = torch.compile(model)  # compiles on its first call
        return self._compiled

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """One update on x (B, C, H, W) with labels y (B,) (-1: unlabelled; None: none);
        returns detached per-step statistics (tensors)."""
        tc = self.cfg.train
        lr = learning_rate(tc, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.distributed:
            seed_rank_step(tc.seed, self.rank, self.step)
        out = self._forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip,
                                                   error_if_nonfinite=False)
        # This is the step's one host sync: the flag and the norm travel in one tensor (one
        # all-reduce across ranks, so a skip on one rank is a skip on all, then one .tolist()).
        # On CPU it costs nothing; on CUDA the host waits for the step's kernels.
        loss = out.loss.detach()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        flags = torch.stack([(~finite).float(), torch.where(finite, grad_norm, 0.0).float()])
        if self.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, norm = flags.tolist()
        skip = self.guard.decide(self.step, nonfinite > 0, norm)
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.ema.update(self.model)
        kl = out.kl.detach()
        return {"loss": loss, "elbo": out.elbo.detach().mean(),
                "log_px": out.log_px.detach().mean(), "kl": kl.sum(1).mean(),
                "kl_groups": kl.mean(0), "grad_norm": grad_norm.detach(),
                "skipped": torch.tensor(float(skip)), "lr": torch.tensor(lr),
                **self._batch_statistics(out)}

    def _forward(self, x: torch.Tensor, y: torch.Tensor | None):
        """The model's output on a batch, ``loss`` the objective at this step's free bits and KL
        weight (``training_loss`` + NVAE's spectral penalty; with labels, eq. 20)."""
        tc = self.cfg.train
        model = self._step_module().train()
        lam, kl_w = free_bits(tc, self.step), kl_weight(tc, self.step)
        if tc.compile:  # a tensor, not a constant baked into the graph: no recompile per step
            kl_w = torch.tensor(kl_w, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            out = model(x) if y is None else model(x, labels=y.to(self.device))
            out.loss = (training_loss(out, free_bits=lam, kl_weight=kl_w) if y is None else
                        semi_supervised_loss(self.model, out, free_bits=lam, kl_weight=kl_w))
            if tc.spectral_reg and y is None:
                out.loss = out.loss + tc.spectral_reg * self.model.spectral_penalty()
        return out

    def _batch_statistics(self, out) -> dict[str, torch.Tensor]:
        """Statistics of a training batch beyond the bound's (none here)."""
        return {}

    # ------------------------------------------------------------------ validation
    def evaluate(self) -> dict:
        """Validation ELBO (L_1, nats and bits/dim), log p(x|z) and KL per group (nats) of the
        EMA model, as a ``kind: "valid"`` record."""
        tc = self.cfg.train
        # One pass gives the ELBO (bit-identical to validation_elbo) and its two terms.
        stats = validation_statistics(self.ema.model, self.valid, self.data.kind,
                                      self.cfg.model.bits, batch_size=self.cfg.eval.batch_size,
                                      device=self.device, max_batches=tc.eval_batches or None)
        return self._valid_record(stats["elbo"], valid_log_px=stats["log_px"],
                                  valid_kl_groups=stats["kl_groups"])

    def sample_grid(self, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """What the sample images show: 16 samples of the EMA model, 8 a row."""
        return self.ema.model.sample(16, generator=generator), 8

    def best_summary(self) -> str:
        """The best validation figure in words (nats, and bits/dim for 8-bit images)."""
        if self.best is None:
            return "no validation yet"
        text = f"best validation ELBO {self.best:.3f} nats"
        if self.data.kind == DataKind.EIGHT_BIT:
            dims = math.prod(self.cfg.model.input_shape)
            text += f" = {float(bits_per_dim(self.best, dims)):.3f} bits/dim"
        return text
