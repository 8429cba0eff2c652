"""Semi-supervised training (appendix F): a labelled and an unlabelled batch every step.

``data.labels_per_class = n`` keeps n seeded, class-balanced training examples labelled
(:func:`biva.data.balanced_label_split`); the rest of the training split is unlabelled and its
labels are dropped. Each step concatenates ``data.labelled_batch_size`` labelled rows (the
labelled set cycled in its own seeded order) with ``train.batch_size`` unlabelled rows and
minimizes eq. 20, alpha = ``train.alpha`` or 0.1 * N_train / N_labelled (Maaløe et al. 2016).
``train.ssl_objective`` picks the recipe: "balanced" (mean F over the labelled rows + mean U
over the unlabelled rows), "paper" (eqs. 15-20 as written: y in q(z_L | x, y), the data-set sum
of eq. 20 as per-example weights N_l / N and N_u / N) or "supervised" (the classifier on the
labelled rows alone, a baseline that never sees an unlabelled image). Both streams are pure
functions of (seed, step), so resuming stays exact. Validation: classification error and bounds
on the validation split (EMA weights); ``checkpoints/best`` holds the lowest validation error.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from biva.config.run import RunConfig, read_run_config
from biva.data import DatasetSplits, ImageSplit, balanced_label_split, epoch_batches, load_run_data
from biva.models.semi_supervised import SemiSupervisedBIVA, default_alpha
from biva.objectives import bits_per_dim
from biva.objectives.classification import evaluate_classification
from biva.training.trainer import Trainer
from biva.utils.atomic import atomic_write_json
from biva.utils.checkpoint import save_checkpoint
from biva.utils.config_io import to_dict
from biva.utils.images import to_display
from biva.utils.jsonl import append_jsonl
from biva.utils.seeds import derive_seed


def is_semi_supervised(cfg: RunConfig) -> bool:
    """True for runs with a labelled subset (``data.labels_per_class > 0``)."""
    return cfg.data.labels_per_class > 0


def trainer_class(cfg: RunConfig) -> type[Trainer]:
    """:class:`SemiSupervisedTrainer` for semi-supervised configs, else :class:`Trainer`."""
    return SemiSupervisedTrainer if is_semi_supervised(cfg) else Trainer


def resume_trainer(run_dir: str | Path, **kwargs) -> Trainer:
    """Resume the run in ``run_dir`` with the trainer class its config.json calls for."""
    return trainer_class(read_run_config(Path(run_dir) / "config.json")).resume(run_dir, **kwargs)


class SemiSupervisedTrainer(Trainer):
    """Train a :class:`SemiSupervisedBIVA` on a labelled subset plus the unlabelled rest.

    ``labelled`` / ``labelled_indices`` / ``unlabelled_indices`` describe the split (indices
    into the dataset's training split); ``self.data.train`` is the unlabelled part, without
    labels.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *,
                 data: DatasetSplits | None = None, resume: bool = False,
                 stop_after: int | None = None):
        if not is_semi_supervised(cfg):
            raise ValueError("SemiSupervisedTrainer needs data.labels_per_class > 0")
        full = data if data is not None else load_run_data(cfg)
        if full.train.labels is None or not full.num_classes:
            raise ValueError(f"dataset {full.name!r} has no labels: semi-supervised training "
                             f"(data.labels_per_class > 0) needs a labelled dataset")
        if cfg.data.num_classes is None:
            cfg.data.num_classes = int(full.num_classes)
        elif cfg.data.num_classes != full.num_classes:
            raise ValueError(f"data.num_classes={cfg.data.num_classes} but dataset "
                             f"{full.name!r} has {full.num_classes} classes")
        self.labelled_indices, self.unlabelled_indices = balanced_label_split(
            full.train.labels, cfg.data.labels_per_class, cfg.train.seed)
        if len(self.unlabelled_indices) == 0:
            raise ValueError("data.labels_per_class labels every training example: nothing "
                             "is left unlabelled")
        self.labelled = full.train.subset(self.labelled_indices)
        # The unlabelled part loses its labels, so nothing downstream can use them by mistake.
        unlabelled = ImageSplit(full.train.images[self.unlabelled_indices], None)
        n_l = len(self.labelled)
        self.alpha = (cfg.train.alpha if cfg.train.alpha is not None
                      else default_alpha(len(full.train), n_l))
        self.labelled_batch_size = min(cfg.data.labelled_batch_size or cfg.train.batch_size,
                                       n_l)
        self._next_labels: torch.Tensor | None = None
        self._valid_record: dict = {}
        super().__init__(cfg, run_dir, data=replace(full, train=unlabelled), resume=resume,
                         stop_after=stop_after)
        if self.labelled_batch_size % self.world:
            raise ValueError(f"the labelled batch ({self.labelled_batch_size}) must be a "
                             f"multiple of the {self.world} ranks")
        if self.rank == 0:
            counts = torch.bincount(self.labelled.labels, minlength=cfg.data.num_classes)
            atomic_write_json(self.run_dir / "labelled.json", {
                "labels_per_class": cfg.data.labels_per_class, "seed": cfg.train.seed,
                "n_labelled": n_l, "n_unlabelled": len(unlabelled), "alpha": self.alpha,
                "labelled_batch_size": self.labelled_batch_size,
                "per_class": counts.tolist(),
                "train_indices": self.labelled_indices.tolist()})

    def _build_model(self) -> SemiSupervisedBIVA:
        return SemiSupervisedBIVA(self.cfg.model, self.cfg.data.num_classes, alpha=self.alpha,
                                  objective=self.cfg.train.ssl_objective,
                                  n_labelled=len(self.labelled),
                                  n_unlabelled=len(self.unlabelled_indices))

    def _init_split(self):
        # The supervised baseline's data-dependent init sees the labelled images only.
        if self.cfg.train.ssl_objective == "supervised":
            return self.labelled
        return super()._init_split()

    # ------------------------------------------------------------------ data
    def labelled_batches(self, step: int):
        """Labelled (images, labels) batches from ``step`` on: a pure function of (seed, step)."""
        b = self.labelled_batch_size
        per_epoch = len(self.labelled) // b
        epoch, start = divmod(step, per_epoch)
        seed = derive_seed(self.cfg.train.seed, "labelled")  # a stream of its own
        while True:
            yield from epoch_batches(self.labelled, b, epoch=epoch, seed=seed,
                                     dynamic_binarize=self.dynamic, start_batch=start)
            epoch, start = epoch + 1, 0

    def _batches(self):
        """(epoch, rows): labelled rows first (their classes in ``_next_labels``, read by
        :meth:`train_step`), then the unlabelled batch; the supervised baseline's rows are
        labelled only, so it never sees an unlabelled image."""
        labelled = self.labelled_batches(self.step)
        per_rank = self.labelled_batch_size // self.world

        def next_labelled():
            x_l, y_l = next(labelled)
            if self.distributed:  # this rank's share
                x_l = x_l[self.rank * per_rank:(self.rank + 1) * per_rank]
                y_l = y_l[self.rank * per_rank:(self.rank + 1) * per_rank]
            self._next_labels = y_l
            return x_l

        if self.cfg.train.ssl_objective == "supervised":
            per_epoch = len(self.labelled) // self.labelled_batch_size
            for step in itertools.count(self.step):
                yield step // per_epoch, next_labelled()
        for epoch, images in super()._batches():
            yield epoch, torch.cat([next_labelled(), images])

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on a batch whose first rows are the labelled batch; adds class stats."""
        y = self._next_labels
        if y is None:
            raise RuntimeError("train_step needs a batch from SemiSupervisedTrainer._batches")
        labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        labels[:len(y)] = y.to(x.device)
        with self.model.given_labels(labels):
            stats = super().train_step(x)
        stats.update(self.model.last_stats)
        return stats

    # ------------------------------------------------------------------ validation
    def evaluate(self, writer=None) -> dict:
        """Validation error and bounds of the EMA model; best checkpoint = lowest error."""
        tc = self.cfg.train
        n = tc.eval_batches * self.cfg.eval.batch_size if tc.eval_batches else 0
        res = evaluate_classification(self.ema.model, self.valid, self.data.kind,
                                      self.cfg.model.bits, batch_size=self.cfg.eval.batch_size,
                                      n_examples=n, seed=0)
        dims = math.prod(self.cfg.model.input_shape)
        rec = {"kind": "valid", "step": self.step, "valid_error": res["error"],
               "valid_elbo": res["L_1"], "valid_elbo_U": res["elbo_U"],
               "valid_bpd": float(bits_per_dim(res["L_1"], dims)),
               "valid_log_px": res["log_px"], "valid_kl_groups": res["kl_groups"],
               "time": time.time(), "cpu_s": self.cpu_seconds}
        self._valid_record = rec
        # best_valid holds -error, so the base class's "higher is better" bookkeeping and
        # checkpoint state work unchanged.
        if -res["error"] > self.best_valid:
            self.best_valid = -res["error"]
            self._save_best(self.best_valid)
        rec["best_valid_error"] = -self.best_valid
        if self.rank == 0:
            append_jsonl(self.metrics_path, rec)
            if writer is not None:
                writer.add_scalar("valid/error", res["error"], self.step)
                writer.add_scalar("valid/elbo", res["L_1"], self.step)
                writer.add_scalar("valid/elbo_U", res["elbo_U"], self.step)
                gen = torch.Generator(device=self.device).manual_seed(0)
                grid = self.ema.model.class_grid(4, generator=gen)
                writer.add_images("samples_by_class", to_display(grid, self.data.kind),
                                  self.step)
        return rec

    def _save_best(self, value: float) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.run_dir / "checkpoints" / "best",
                        tensors={"model": self.ema.state_dict()},
                        state={"step": self.step, "valid_error": -value,
                               "valid_elbo": self._valid_record.get("valid_elbo"),
                               "config": to_dict(self.cfg)})

    @property
    def best_valid_error(self) -> float:
        """Lowest validation error so far (fraction; nan before the first evaluation)."""
        return -self.best_valid if math.isfinite(self.best_valid) else math.nan
