"""A trainer's resumable state: what a step checkpoint holds and how it is restored, and the
validation figure the best checkpoint is chosen on (:class:`Selection`).

A step checkpoint holds the model, the EMA, the optimizer and every RNG state as tensors, and
as JSON the step, the update guard's history, the CPU seconds spent, the best validation
figure and the resolved config. Restoring it and replaying the data stream from its step gives
bit-identical parameters on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from biva.training.ema import EMA
from biva.training.stopping import CpuClock
from biva.utils.checkpoint import flatten_state_dict, unflatten_state_dict
from biva.utils.config_io import to_dict
from biva.utils.rng import capture_rng_state, restore_rng_state


@dataclass(frozen=True)
class Selection:
    """The validation figure the best checkpoint is chosen on (a key of the validation
    record, e.g. ``valid_elbo``) and its direction."""

    metric: str
    higher_is_better: bool

    def improves(self, value: float, best: float | None) -> bool:
        """True when ``value`` beats ``best`` (None: nothing yet; a NaN never improves)."""
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher_is_better else value < best)

    def best_in(self, state: dict) -> float | None:
        """The best figure a checkpoint's state recorded. Checkpoints written before the
        selection was named hold it as ``best_valid``, signed so that higher was better."""
        chosen = state.get("selection")
        if isinstance(chosen, dict) and chosen.get("metric") == self.metric:
            return chosen.get("best")
        legacy = state.get("best_valid")
        if legacy is None or not math.isfinite(legacy):
            return None
        return legacy if self.higher_is_better else -legacy

    def as_state(self, best: float | None) -> dict:
        """The checkpoint's record of the selection and its best figure."""
        return {"metric": self.metric, "best": best, "higher_is_better": self.higher_is_better}


def parameter_names(model: nn.Module) -> list[str]:
    """The model's parameter names in the order its optimizer holds them."""
    return [n for n, _ in model.named_parameters()]


def in_parameter_order(optimizer_state: dict, saved: list[str], current: list[str]) -> dict:
    """An optimizer ``state_dict`` saved with its parameters in the order ``saved`` (names),
    its one group re-listed in the order ``current``: torch matches saved and current
    parameters by position, so a model whose parameters moved (same names, another order)
    would otherwise give each parameter another one's moments."""
    if sorted(saved) != sorted(current):
        missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        raise ValueError(f"the checkpoint's optimizer state is for other parameters (missing "
                         f"{missing[:3]}, unknown {extra[:3]}); resume with the code and "
                         "config that wrote it, or start from its weights with --init-from")
    groups = optimizer_state["param_groups"]
    if saved == current:
        return optimizer_state
    if len(groups) != 1:
        raise ValueError(f"an optimizer state of {len(groups)} parameter groups saved in "
                         "another parameter order: which group a parameter belongs to is not "
                         "recorded, so its moments cannot be matched")
    ids = dict(zip(saved, groups[0]["params"], strict=True))
    return {**optimizer_state, "param_groups": [{**groups[0],
                                                 "params": [ids[n] for n in current]}]}


def capture_training_state(trainer) -> tuple[dict, dict]:
    """(tensors, state) of a step checkpoint of ``trainer`` (a :class:`Trainer`)."""
    opt_tensors, opt_skeleton = flatten_state_dict(trainer.optimizer.state_dict())
    rng_tensors, rng_meta = capture_rng_state()
    state = {"step": trainer.step, **trainer.guard.state_dict(),
             "ema_updates": trainer.ema.updates, "cpu_s": trainer.clock.seconds,
             "selection": trainer.selection.as_state(trainer.best),
             "optimizer": opt_skeleton, "parameters": parameter_names(trainer.model),
             "rng": rng_meta, "config": to_dict(trainer.cfg)}
    tensors = {"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(),
               "optimizer": opt_tensors, "rng": rng_tensors}
    return tensors, state


def restore_training_state(trainer, tensors: dict, state: dict) -> None:
    """Put a step checkpoint's (tensors, state) back into ``trainer``: weights, EMA, optimizer,
    RNG states, step, update guard, CPU clock offset and best figure."""
    tc = trainer.cfg.train
    trainer.model.load_state_dict(tensors["model"])
    trainer.ema = EMA(trainer.model, tc.ema_decay, warmup=tc.ema_warmup)
    trainer.ema.load_state_dict(tensors["ema"])
    trainer.ema.updates = state.get("ema_updates", state["step"] - state["skipped"])
    saved = state.get("parameters") or trainer.model.legacy_parameter_names()
    trainer.optimizer.load_state_dict(in_parameter_order(
        unflatten_state_dict(tensors["optimizer"], state["optimizer"]), saved,
        parameter_names(trainer.model)))
    restore_rng_state(tensors.get("rng", {}), state["rng"])
    trainer.step = state["step"]
    trainer.guard.load_state_dict(state)
    trainer.clock = CpuClock(state.get("cpu_s", 0.0))
    trainer.best = trainer.selection.best_in(state)
