"""The trainer's parts on their own (issue 39): the stop policy and signals without a model,
the update guard without gradients, the run directory without training, the selection rule,
and the callbacks' promise not to draw from the training RNG."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from biva.config.run import TrainConfig
from biva.training.callbacks import MetricsLog, SampleImages
from biva.training.run_directory import RunDirectory
from biva.training.state import Selection
from biva.training.stopping import CpuClock, StopPolicy, StopSignals
from biva.training.updates import UpdateGuard
from biva.utils.checkpoint import CheckpointError, list_checkpoints


def train_config(**fields) -> TrainConfig:
    cfg = TrainConfig()
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


# ------------------------------------------------------------------ stop policy and signals
def test_the_cpu_budget_counts_the_cpu_seconds_of_earlier_sessions():
    tc = train_config(max_cpu_minutes=1.0)
    assert StopPolicy(tc, CpuClock(offset=59.0)).budget_reached() is None
    reason = StopPolicy(tc, CpuClock(offset=61.0)).budget_reached()
    assert reason == "the CPU budget of 1.0 min was reached"


def test_the_wall_budget_runs_from_the_start_of_this_fit():
    policy = StopPolicy(train_config(max_minutes=2.0), CpuClock())
    assert policy.has_budget and policy.budget_reached() is None
    policy.started = time.perf_counter() - 121.0
    assert policy.budget_reached() == "the time budget of 2.0 min was reached"
    assert not StopPolicy(train_config(), CpuClock()).has_budget


def test_stop_after_stops_at_its_step_and_not_before():
    policy = StopPolicy(train_config(), CpuClock(), stop_after=5)
    assert policy.stop_after_reached(4) is None
    assert policy.stop_after_reached(5) == "--stop-after 5"
    assert StopPolicy(train_config(), CpuClock()).stop_after_reached(10**9) is None


def test_a_real_sigterm_sets_the_flag_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(announce=False) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while signals.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.received == signal.SIGTERM
        # A second signal acts at once: the handler is the one from before the block.
        assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------ update guard
def test_the_guard_skips_nonfinite_and_exploding_updates_then_forces_one():
    guard = UpdateGuard(train_config(skip_threshold="auto", skip_min_history=3,
                                     skip_factor=10.0, warmup_steps=0,
                                     max_consecutive_skips=2, max_bad_steps=4))
    assert guard.decide(0, nonfinite=True, norm=0.0) is True      # non-finite: always
    assert guard.grad_norms == type(guard.grad_norms)()           # not in the history
    for step in range(1, 4):
        assert guard.decide(step, False, 1.0) is False            # builds the history
    assert guard.threshold(4) == pytest.approx(10.0)
    assert guard.decide(4, False, 50.0) is True
    assert guard.decide(5, False, 50.0) is True
    assert guard.consecutive_skips == 2 and guard.in_a_bad_stretch
    assert guard.decide(6, False, 50.0) is False                  # forced, clipped
    assert guard.skipped == 3 and guard.consecutive_skips == 0 and guard.bad_streak == 3
    assert not guard.stalled
    assert guard.decide(7, False, 500.0) is True and guard.stalled
    assert "4 updates in a row" in guard.stall_message(7, None)


def test_the_guard_state_round_trips_through_a_checkpoint_state():
    tc = train_config(skip_threshold="auto", skip_min_history=1, warmup_steps=0)
    guard = UpdateGuard(tc)
    for step, norm in enumerate([1.0, 2.0, 1e6]):
        guard.decide(step, False, norm)
    again = UpdateGuard(tc)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.state_dict() == guard.state_dict()
    assert again.threshold(3) == guard.threshold(3)


def test_a_fixed_threshold_ignores_the_history():
    guard = UpdateGuard(train_config(skip_threshold=5.0))
    assert guard.threshold(0) == 5.0
    assert guard.decide(0, False, 6.0) is True and guard.decide(1, False, 4.0) is False


# ------------------------------------------------------------------ selection
@pytest.mark.parametrize("higher,values,best", [(True, [-90.0, -80.0, -85.0], -80.0),
                                                (False, [0.3, 0.1, 0.2], 0.1)])
def test_the_selection_keeps_the_best_in_its_direction(higher, values, best):
    selection, kept = Selection("valid_x", higher), None
    for v in values:
        if selection.improves(v, kept):
            kept = v
    assert kept == best
    assert not selection.improves(math.nan, None)


def test_checkpoints_before_the_named_selection_still_give_their_best():
    """Old checkpoints held the best as best_valid, higher-is-better signed (an error e as -e)."""
    error = Selection("valid_error", higher_is_better=False)
    elbo = Selection("valid_elbo", higher_is_better=True)
    assert error.best_in({"best_valid": -0.08}) == pytest.approx(0.08)
    assert elbo.best_in({"best_valid": -92.5}) == -92.5
    assert elbo.best_in({"best_valid": None}) is None
    assert error.best_in({"selection": error.as_state(0.07)}) == 0.07


# ------------------------------------------------------------------ run directory
def _tensors():
    return {"model": {"w": torch.ones(2)}, "ema": {"w": torch.ones(2)},
            "optimizer": {}, "rng": {}}


def test_the_run_directory_keeps_the_last_checkpoints_and_the_best(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.open()
    try:
        run.save_best({"model": {"w": torch.zeros(2)}}, {"step": 1})
        for step in (1, 2, 3, 4):
            run.save(step, _tensors(), {"step": step, "skipped": 0}, keep_last=2)
        assert [p.name for p in list_checkpoints(run.path)] == ["step_000000003",
                                                                 "step_000000004"]
        assert run.latest().name == "step_000000004" and run.best_path.is_dir()
    finally:
        run.unlock()


def test_the_best_weights_are_refused_as_a_training_checkpoint(tmp_path):
    from biva.config.run import RunConfig

    run = RunDirectory(tmp_path / "run")
    run.open()
    run.save_best({"model": {"w": torch.zeros(2)}}, {"step": 1})
    run.unlock()
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run.load(run.best_path, RunConfig(), torch.device("cpu"))


def test_a_second_process_cannot_open_a_run_directory_in_use(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.open()
    try:
        code = ("import sys; from biva.training.run_directory import RunDirectory\n"
                "try:\n    RunDirectory(sys.argv[1]).open()\n"
                "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", code, str(run.path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 3 and "in use by another biva process" in done.stdout
    finally:
        run.unlock()


# ------------------------------------------------------------------ callbacks
class _Trainer:
    """What the callbacks read of a trainer, with a real model behind sample_grid."""

    def __init__(self, run, model):
        self.run, self.model, self.device = run, model, torch.device("cpu")
        self.data = type("D", (), {"kind": "binary"})()

    def sample_grid(self, generator):
        return self.model.sample(4, generator=generator), 2


def test_sample_images_and_metrics_leave_the_training_rng_alone(tmp_path):
    from biva.config.model import ModelConfig
    from biva.models import build_hierarchy

    model = build_hierarchy(ModelConfig(input_shape=(1, 8, 8), latents=(4, 2), filters=(4,),
                                        kernels=(3,), strides=(1,), blocks=1)).eval()
    run = RunDirectory(tmp_path / "run")
    trainer = _Trainer(run, model)
    rng = torch.get_rng_state()
    record = {"kind": "valid", "step": 3, "valid_elbo": -50.0}
    SampleImages(tmp_path / "run" / "figures" / "s.png").on_valid_record(trainer, record)
    (tmp_path / "run").mkdir(exist_ok=True)
    MetricsLog().on_valid_record(trainer, record)
    assert torch.equal(torch.get_rng_state(), rng)
    assert (tmp_path / "run" / "figures" / "s.png").stat().st_size > 0
    lines = run.metrics_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record]


def test_auto_threads_leave_the_cores_other_processes_hold():
    """--threads 0 on a busy machine: no more threads than idle cores (two threads on a
    2-core machine with one core busy spin-waited: 19 steps in a 4-CPU-minute budget)."""
    from biva.utils.machine import threads_for_load

    assert threads_for_load(2, 0.1, default=2) == 2       # idle: torch's default
    assert threads_for_load(2, 1.2, default=2) == 1       # one core busy
    assert threads_for_load(2, 3.7, default=2) == 1       # never fewer than one
    assert threads_for_load(16, 4.4, default=16) == 12
    assert threads_for_load(16, 0.0, default=8) == 8      # never more than the default
    assert threads_for_load(2, None, default=2) == 2      # no load average (not Linux)
