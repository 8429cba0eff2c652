"""What the trainer reports, as callbacks: metrics.jsonl, TensorBoard, the progress bar and
the sample images written at each validation.

A callback sees the trainer after each step (:meth:`Callback.on_step`), each training log
record (:meth:`Callback.on_train_record`, means over ``train.log_every`` steps) and each
validation record (:meth:`Callback.on_valid_record`). Callbacks only read: none draws from the
global RNG, so logging never changes what is trained. Only rank 0 gets callbacks.
"""

from __future__ import annotations

import math
import sys

import torch

from biva.config import DataKind
from biva.objectives import bits_per_dim
from biva.utils.images import save_grid, to_display


class Callback:
    """Hooks the trainer calls; each does nothing by default."""

    def on_step(self, trainer) -> None:
        """After every update."""

    def on_train_record(self, trainer, record: dict) -> None:
        """After each training log record (``kind: "train"``)."""

    def on_valid_record(self, trainer, record: dict) -> None:
        """After each validation (``kind: "valid"``)."""

    def close(self) -> None:
        """At the end of ``fit()``, however it ends."""


class MetricsLog(Callback):
    """Every record as one JSON line in RUN_DIR/metrics.jsonl."""

    def on_train_record(self, trainer, record: dict) -> None:
        trainer.run.append_metrics(record)

    def on_valid_record(self, trainer, record: dict) -> None:
        trainer.run.append_metrics(record)


class TensorBoardLog(Callback):
    """Scalars to RUN_DIR/tensorboard: train/*, kl/<group>, and valid/<figure> for every
    ``valid_*`` number of a validation record."""

    TRAIN = ("loss", "elbo", "log_px", "kl", "grad_norm", "lr", "images_per_s")

    def __init__(self, run_dir, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)

    def on_train_record(self, trainer, record: dict) -> None:
        step = record["step"]
        for k in self.TRAIN:
            self.writer.add_scalar(f"train/{k}", record[k], step)
        self.writer.add_scalar("train/skipped_total", record["skipped_total"], step)
        for g, v in record["kl_groups"].items():
            self.writer.add_scalar(f"kl/{g}", v, step)

    def on_valid_record(self, trainer, record: dict) -> None:
        for key, value in record.items():
            if key.startswith("valid_") and isinstance(value, float):
                self.writer.add_scalar(f"valid/{key[len('valid_'):]}", value, record["step"])

    def close(self) -> None:
        self.writer.close()


class SampleImages(Callback):
    """At each validation, the EMA model's samples (seeded: the same noise every time) to
    RUN_DIR/figures/samples_latest.png and, with a TensorBoard log, its image tab."""

    def __init__(self, path, tensorboard: TensorBoardLog | None = None):
        self.path, self.tensorboard = path, tensorboard

    def on_valid_record(self, trainer, record: dict) -> None:
        gen = torch.Generator(device=trainer.device).manual_seed(0)
        images, nrow = trainer.sample_grid(gen)
        save_grid(images, self.path, kind=trainer.data.kind, nrow=nrow)
        if self.tensorboard is not None:
            self.tensorboard.writer.add_images("samples", to_display(images, trainer.data.kind),
                                               record["step"])


class ProgressBar(Callback):
    """A tqdm bar on stderr: over the time budget when ``train.max_minutes`` is set (its ETA is
    the budget's end), over the CPU budget when ``train.max_cpu_minutes`` is, else over the
    steps; the postfix carries the step, the training ELBO per image (bits/dim for 8-bit
    images, nats for binary ones), images/s, skipped updates and the last validation bits/dim."""

    def __init__(self, trainer):
        from tqdm import tqdm

        tc, name = trainer.cfg.train, trainer.cfg.name
        self.tc, self.info = tc, {}
        common = {"dynamic_ncols": True, "mininterval": 1.0, "file": sys.stderr}
        if tc.max_minutes > 0:
            self.bar = tqdm(total=round(60 * tc.max_minutes), desc=f"{name} (time budget)",
                            unit="s", bar_format="{l_bar}{bar}| {elapsed} elapsed, "
                                                 "{remaining} left{postfix}", **common)
        elif tc.max_cpu_minutes > 0:
            # Over the CPU budget (CPU seconds of the run, resumes included), not the steps:
            # a step count of 100,000 would show an ETA of a day for a one-hour budget.
            # The ETA is wall time: the CPU budget at the rate this run gets CPU time.
            self.bar = tqdm(total=round(60 * tc.max_cpu_minutes),
                            initial=int(trainer.clock.seconds), desc=f"{name} (CPU budget)",
                            unit="cpu-s", bar_format="{l_bar}{bar}| {n:.0f}/{total} CPU-s, "
                                                     "{elapsed} elapsed, ~{remaining} left"
                                                     "{postfix}", **common)
        else:
            self.bar = tqdm(total=tc.steps, initial=trainer.step, desc=name, **common)

    def on_step(self, trainer) -> None:
        bar = self.bar
        if self.tc.max_minutes > 0:
            bar.update(min(int(trainer.stop_policy.wall_seconds), bar.total) - bar.n)
        elif self.tc.max_cpu_minutes > 0:
            bar.update(min(int(trainer.clock.seconds), bar.total) - bar.n)
        else:
            bar.update(1)

    def on_train_record(self, trainer, record: dict) -> None:
        # What a user reads: the training ELBO per image, not the loss's sum over a batch.
        dims = math.prod(trainer.cfg.model.input_shape)
        elbo = (f"{float(bits_per_dim(record['elbo'], dims)):.3f} bpd"
                if trainer.data.kind == DataKind.EIGHT_BIT else f"{-record['elbo']:.2f} nats")
        self.info.update(step=record["step"], train_elbo=elbo,
                         img_s=f"{record['images_per_s']:.1f}", skip=record["skipped_total"])
        self.bar.set_postfix(self.info, refresh=False)

    def on_valid_record(self, trainer, record: dict) -> None:
        if "valid_bpd" in record:
            self.info["valid_bpd"] = f"{record['valid_bpd']:.3f}"
            self.bar.set_postfix(self.info, refresh=False)

    def close(self) -> None:
        self.bar.close()


def default_callbacks(trainer) -> list[Callback]:
    """metrics.jsonl, TensorBoard (if importable), sample images and (``train.progress``) the
    bar; none off rank 0, which writes no files."""
    if trainer.rank != 0:
        return []
    out: list[Callback] = [MetricsLog()]
    try:
        tensorboard = TensorBoardLog(trainer.run.path, trainer.step)
        out.append(tensorboard)
    except ImportError:  # tensorboard is a dependency, but never let logging stop a run
        tensorboard = None
    out.append(SampleImages(trainer.run.path / "figures" / "samples_latest.png", tensorboard))
    if trainer.cfg.train.progress:
        out.append(ProgressBar(trainer))
    return out
