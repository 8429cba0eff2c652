"""When training stops: the step count, wall and CPU budgets, ``--stop-after`` and signals.

:class:`StopPolicy` answers "stop now, and why?" from the clock and the step alone, with no
model; :class:`StopSignals` turns SIGINT/SIGTERM into a flag read at the next step boundary.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from biva.config.run import TrainConfig


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary, after writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint written; "
                         f"continue with `biva train --resume {run_dir}`")


class CpuClock:
    """Process CPU seconds (all threads) spent on a run, carried over its resumes."""

    def __init__(self, offset: float = 0.0):
        self.offset, self.start = float(offset), time.process_time()

    @property
    def seconds(self) -> float:
        """CPU seconds of the run so far (resumes included)."""
        return self.offset + time.process_time() - self.start


class StopPolicy:
    """The stopping rules of one ``fit()``: ``train.steps``, ``train.max_minutes`` (wall time
    since the policy was made), ``train.max_cpu_minutes`` (the run's CPU time, resumes
    included) and ``stop_after`` (a step to stop at, as if interrupted)."""

    def __init__(self, tc: TrainConfig, clock: CpuClock, stop_after: int | None = None):
        self.tc, self.clock, self.stop_after = tc, clock, stop_after
        self.started = time.perf_counter()

    @property
    def has_budget(self) -> bool:
        """True when a wall or CPU budget is set (checking it is then a collective step)."""
        return self.tc.max_minutes > 0 or self.tc.max_cpu_minutes > 0

    @property
    def wall_seconds(self) -> float:
        """Wall seconds since this fit() began."""
        return time.perf_counter() - self.started

    def budget_reached(self) -> str | None:
        """Why a budget stops training now ("the CPU budget of 30 min was reached"), or None."""
        tc = self.tc
        if tc.max_cpu_minutes > 0 and self.clock.seconds > 60 * tc.max_cpu_minutes:
            return f"the CPU budget of {tc.max_cpu_minutes} min was reached"
        if tc.max_minutes > 0 and self.wall_seconds > 60 * tc.max_minutes:
            return f"the time budget of {tc.max_minutes} min was reached"
        return None

    def steps_reason(self) -> str:
        """The reason a run that trains to the end gives."""
        return f"train.steps = {self.tc.steps} were reached"

    def stop_after_reached(self, step: int) -> str | None:
        """"--stop-after N" once ``step`` reaches N, else None."""
        if self.stop_after is not None and step >= self.stop_after:
            return f"--stop-after {self.stop_after}"
        return None


class StopSignals:
    """Within the block, SIGINT/SIGTERM set :attr:`received` (training stops after the step,
    with a checkpoint); a second signal acts at once. Outside the main thread, a no-op."""

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._previous:
            signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous[signum])
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a "
                  "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
