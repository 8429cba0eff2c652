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
from dataclasses import replace
from pathlib import Path

import torch

from biva.config.run import RunConfig, read_run_config
from biva.data import DatasetSplits, ImageSplit, balanced_label_split, epoch_batches, load_run_data
from biva.models.semi_supervised import UNLABELLED, SemiSupervisedBIVA, default_alpha
from biva.objectives.classification import evaluate_classification
from biva.training.trainer import Selection, Trainer
from biva.utils.atomic import atomic_write_json
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
    labels. The best checkpoint holds the lowest validation error.
    """

    #: The validation error (fraction of the validation split), lower is better.
    selection = Selection("valid_error", higher_is_better=False)

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
        """(epoch, images, labels): the labelled rows first with their classes, then the
        unlabelled batch labelled -1; the supervised baseline's rows are labelled only, so it
        never sees an unlabelled image."""
        labelled = self.labelled_batches(self.step)
        per_rank = self.labelled_batch_size // self.world

        def next_labelled():
            x_l, y_l = next(labelled)
            if self.distributed:  # this rank's share
                x_l = x_l[self.rank * per_rank:(self.rank + 1) * per_rank]
                y_l = y_l[self.rank * per_rank:(self.rank + 1) * per_rank]
            return x_l, y_l.to(torch.long)

        if self.cfg.train.ssl_objective == "supervised":
            per_epoch = len(self.labelled) // self.labelled_batch_size
            for step in itertools.count(self.step):
                yield step // per_epoch, *next_labelled()
        for epoch, images, _ in super()._batches():
            x_l, y_l = next_labelled()
            unlabelled = torch.full((images.shape[0],), UNLABELLED, dtype=torch.long)
            yield epoch, torch.cat([x_l, images]), torch.cat([y_l, unlabelled])

    def _batch_statistics(self, out) -> dict[str, torch.Tensor]:
        """The classifier's statistics on the batch (cross-entropy, train error, bounds)."""
        return self.model.batch_statistics(out)

    # ------------------------------------------------------------------ validation
    def evaluate(self) -> dict:
        """Validation error and bounds of the EMA model, as a ``kind: "valid"`` record."""
        tc = self.cfg.train
        n = tc.eval_batches * self.cfg.eval.batch_size if tc.eval_batches else 0
        res = evaluate_classification(self.ema.model, self.valid, self.data.kind,
                                      self.cfg.model.bits, batch_size=self.cfg.eval.batch_size,
                                      n_examples=n, seed=0)
        return self._valid_record(res["L_1"], valid_error=res["error"],
                                  valid_elbo_U=res["elbo_U"], valid_log_px=res["log_px"],
                                  valid_kl_groups=res["kl_groups"])

    def sample_grid(self, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Four samples of each class, one class a row."""
        return self.ema.model.class_grid(4, generator=generator), 4

    def best_summary(self) -> str:
        """The lowest validation error so far, in percent."""
        if self.best is None:
            return "no validation yet"
        return f"best validation error {100 * self.best:.2f}%"
