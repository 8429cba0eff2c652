"""Training: the loop (:mod:`.loop`), the resumable trainer (:class:`Trainer`) and its
semi-supervised variant, and their parts: the run directory, stop rules and signals, the
update guard, callbacks (metrics.jsonl, TensorBoard, progress bar, sample images), checkpoint
state and selection, set-up; the schedules (learning rate, free bits, KL warm-up), EMA,
precision, memory checks and ``torchrun`` helpers. The run config it trains from lives in
:mod:`biva.config.run`."""

from biva.training.ema import EMA
from biva.training.trainer import Trainer

__all__ = ["EMA", "Trainer"]
