"""Training: the resumable trainer (:class:`Trainer`) and its semi-supervised variant, the
schedules (learning rate, free bits, KL warm-up), EMA, precision, memory checks and
``torchrun`` helpers. The run config it trains from lives in :mod:`biva.config.run`."""

from biva.training.ema import EMA
from biva.training.trainer import Trainer

__all__ = ["EMA", "Trainer"]
