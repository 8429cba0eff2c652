"""Schedules as pure functions of the step, so a resumed run needs only the step number."""

from __future__ import annotations

from biva.config.run import TrainConfig


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then ``lr * decay**t`` floored."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return max(cfg.min_lr, cfg.lr * cfg.lr_decay ** (step - cfg.warmup_steps))


def free_bits(cfg: TrainConfig, step: int) -> float:
    """lambda (nats per group and example): ``free_bits``, then 0 in the fine-tuning phase."""
    return 0.0 if step >= cfg.steps - cfg.finetune_steps else cfg.free_bits


def kl_weight(cfg: TrainConfig, step: int) -> float:
    """beta in [0, 1]: linear warm-up of the KL term over ``kl_warmup_steps`` (1 if none)."""
    if cfg.kl_warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / cfg.kl_warmup_steps)
