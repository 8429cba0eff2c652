"""Which updates to take: skip non-finite or exploding gradients, and notice a divergence.

:class:`UpdateGuard` holds the history the decision needs (recent gradient norms, skips in a
row) and nothing else, so it is tested without a model and saved in every checkpoint.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from biva.config.run import TrainConfig


class TrainingStalled(RuntimeError):
    """Too many updates in a row were skipped (non-finite or exploding): the run diverged."""


class UpdateGuard:
    """Skip an update whose loss or gradient norm is non-finite, or whose norm exceeds
    :meth:`threshold`; after ``train.max_consecutive_skips`` skips in a row an exploding
    (finite) update is taken anyway, clipped. ``bad_streak`` counts skipped or forced updates
    in a row; at ``train.max_bad_steps`` the run has diverged (:attr:`stalled`)."""

    def __init__(self, tc: TrainConfig):
        self.tc = tc
        self.skipped = 0
        self.consecutive_skips = 0
        self.bad_streak = 0
        # Recent finite gradient norms (pre-clip): the data-scaled skip threshold (auto).
        self.grad_norms: deque[float] = deque(maxlen=tc.skip_window)

    def threshold(self, step: int) -> float:
        """The gradient norm above which the update of ``step`` is skipped (inf: none is)."""
        tc = self.tc
        if tc.skip_threshold != "auto":
            return float(tc.skip_threshold)
        # No skipping in the lr warm-up: there the norms grow by orders of magnitude as the
        # likelihood sharpens (860 -> 56,000 in 150 steps on 32x32 photos) and lr is small.
        if len(self.grad_norms) < tc.skip_min_history or step < tc.warmup_steps:
            return math.inf
        return tc.skip_factor * statistics.median(self.grad_norms)

    def decide(self, step: int, nonfinite: bool, norm: float) -> bool:
        """Record the update of ``step`` (its pre-clip gradient ``norm``); True: skip it."""
        exploding = norm > self.threshold(step)   # before this norm joins the history
        skip = nonfinite or exploding
        if not nonfinite:
            self.grad_norms.append(norm)
        if skip and not nonfinite and self.consecutive_skips >= self.tc.max_consecutive_skips:
            # Guard against skipping forever: after a run of skips, take the (clipped) update.
            skip = False
        forced = not skip and exploding
        self.bad_streak = self.bad_streak + 1 if skip or forced else 0
        if skip:
            self.skipped += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0
        return skip

    @property
    def stalled(self) -> bool:
        """True once ``train.max_bad_steps`` updates in a row were skipped or forced."""
        return self.bad_streak >= self.tc.max_bad_steps

    @property
    def in_a_bad_stretch(self) -> bool:
        """A run of skips long enough to be a divergence: keep the checkpoints before it."""
        return self.bad_streak >= self.tc.max_consecutive_skips

    def stall_message(self, step: int, latest_checkpoint) -> str:
        """Why the run stopped, what is kept, and what to change."""
        kept = (f"The last checkpoint before it is {latest_checkpoint}"
                if latest_checkpoint is not None else "No checkpoint was written")
        return (f"training stalled: {self.bad_streak} updates in a row were skipped or forced "
                f"(non-finite or exploding gradients) up to step {step}; the run has "
                f"diverged. {kept}. Lower train.lr (now {self.tc.lr:g}) or train.grad_clip "
                f"(now {self.tc.grad_clip:g}) and resume or restart")

    def state_dict(self) -> dict:
        """The checkpoint's view (JSON-ready)."""
        return {"skipped": self.skipped, "consecutive_skips": self.consecutive_skips,
                "bad_streak": self.bad_streak, "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint's state (older checkpoints lack some keys: zeros)."""
        self.skipped = state["skipped"]
        self.consecutive_skips = state.get("consecutive_skips", 0)
        self.bad_streak = state.get("bad_streak", 0)
        self.grad_norms.extend(state.get("grad_norms", []))
