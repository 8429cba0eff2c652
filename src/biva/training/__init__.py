"""Training: run configs, schedules, EMA and the resumable trainer."""

from .config import DataConfig, EvalConfig, RunConfig, TrainConfig, load_run_config, resolve_config
from .ema import EMA
from .trainer import Trainer, load_run_data, resolve_device

__all__ = ["DataConfig", "EvalConfig", "RunConfig", "TrainConfig", "load_run_config",
           "resolve_config", "EMA", "Trainer", "load_run_data", "resolve_device"]
