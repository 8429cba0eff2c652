"""Training pipeline: exact resume (in-process and after a real SIGKILL), safe updates,
reproducibility, schedules and the EMA.

Everything runs a tiny BIVA (8 filters, 1 block) on scikit-learn's 8x8 digits, with a training
split of 200 examples so that short runs cross epoch boundaries.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from tiny import digits_config

from biva.cli.main import main
from biva.config import load_run_config
from biva.data import load_run_data
from biva.models import HierarchicalVAE
from biva.training import Trainer
from biva.training.ema import EMA
from biva.training.schedule import free_bits, kl_weight, learning_rate
from biva.utils.checkpoint import list_checkpoints, load_checkpoint
from biva.utils.jsonl import read_jsonl

# 200 training examples: 6 batches of 32 an epoch, so 12 steps cover two epochs.
# The tiny run of tests/tiny.py (tiny.BASE), and this file's own intervals and sizes.
TINY = ["train.finetune_steps=2", "train.log_every=4", "train.eval_every=6",
        "train.checkpoint_every=4", "train.batch_size=32", "eval.n_samples=4",
        "data.valid_size=1150"]
STEPS = 12


def tiny_config(*extra: str, steps: int = STEPS):
    return digits_config(*TINY, *extra, steps=steps)


@pytest.fixture(scope="module")
def data():
    """The digits splits, loaded once (the tiny config's data section)."""
    return load_run_data(tiny_config())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data) -> Path:
    """An uninterrupted run of the tiny config (seed 0)."""
    run = tmp_path_factory.mktemp("reference")
    Trainer(tiny_config(), run, data=data).fit()
    return run


def final_checkpoint(run: Path, step: int = STEPS) -> dict[str, dict[str, torch.Tensor]]:
    path = run / "checkpoints" / f"step_{step:09d}"
    assert (path / "meta.json").is_file(), f"no {path.name} in {run}: {os.listdir(path.parent)}"
    tensors, state = load_checkpoint(path)
    assert state["step"] == step
    return tensors


def assert_identical(a: dict, b: dict, groups=("model", "ema", "optimizer")) -> None:
    """Bit-identical tensors in every group (same keys, dtypes, shapes and values)."""
    for group in groups:
        assert a[group].keys() == b[group].keys(), group
        assert a[group], f"empty group {group}"
        for key in a[group]:
            ta, tb = a[group][key], b[group][key]
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, f"{group}/{key}"
            assert torch.equal(ta, tb), f"{group}/{key} differs"


def metric_records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "cpu_s")}
            for r in read_jsonl(run / "metrics.jsonl")]


def assert_no_duplicate_steps(records: list[dict]) -> None:
    for kind in ("train", "valid"):
        steps = [r["step"] for r in records if r["kind"] == kind]
        assert steps == sorted(set(steps)), f"{kind} steps repeated or out of order: {steps}"


def first_batch(trainer: Trainer) -> torch.Tensor:
    _, images, _ = next(trainer._batches())
    return trainer._batch(images)


def snapshot(trainer: Trainer) -> dict:
    return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in trainer.ema.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict())}


def assert_untouched(trainer: Trainer, before: dict) -> None:
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before["model"][key]), f"model {key} changed"
    for key, value in trainer.ema.state_dict().items():
        assert torch.equal(value, before["ema"][key]), f"ema {key} changed"
    state = trainer.optimizer.state_dict()["state"]
    assert state.keys() == before["optimizer"]["state"].keys()
    for idx, entry in state.items():
        for name, value in entry.items():
            assert torch.equal(value, before["optimizer"]["state"][idx][name]), f"opt {idx}/{name}"


def changed_params(trainer: Trainer, before: dict) -> int:
    return sum(not torch.equal(p, before["model"][k])
               for k, p in trainer.model.named_parameters())


# ----------------------------------------------------------------------------- resume


def test_stop_after_then_resume_equals_uninterrupted(tmp_path, data, reference_run):
    run = tmp_path / "run"
    # Step 7: after the evaluation at step 6, past the checkpoint at step 4 (not a checkpoint
    # step), so the resume must replay steps 5-7 and drop the log records written after step 4.
    stopped = Trainer(tiny_config(), run, data=data, stop_after=7)
    stopped.fit()
    assert stopped.step == 7
    # Stopped "as if interrupted": with a checkpoint of step 7, from which a copy resumes.
    assert [p.name for p in list_checkpoints(run)] == ["step_000000004", "step_000000007"]
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == 6
    copy_run = tmp_path / "copy"
    shutil.copytree(run, copy_run)
    from_seven = Trainer.resume(copy_run, data=data)
    assert from_seven.step == 7
    from_seven.fit()
    assert_identical(final_checkpoint(copy_run), final_checkpoint(reference_run))

    # A kill before that checkpoint (removed here): the resume replays steps 5-7.
    shutil.rmtree(run / "checkpoints" / "step_000000007")
    resumed = Trainer.resume(run, data=data)
    assert resumed.step == 4
    steps_after_resume = metric_records(run)
    assert max(r["step"] for r in steps_after_resume) == 4, "records past step 4 not truncated"
    resumed.fit()
    assert resumed.step == STEPS

    assert_identical(final_checkpoint(run), final_checkpoint(reference_run))
    records = metric_records(run)
    assert_no_duplicate_steps(records)
    assert records == metric_records(reference_run)


@pytest.mark.parametrize("budget", ["train.max_minutes", "train.max_cpu_minutes"])
def test_time_budget_stop_then_resume_equals_uninterrupted(tmp_path, data, reference_run,
                                                           budget):
    run = tmp_path / "run"
    # A budget of ~60 microseconds (wall or CPU): the run stops (evaluating and saving) within
    # a step or two.
    stopped = Trainer(tiny_config(f"{budget}=0.000001"), run, data=data)
    stopped.fit()
    assert stopped.step < STEPS and _latest_step(run) == stopped.step
    assert read_jsonl(run / "metrics.jsonl")[-1] == {**read_jsonl(run / "metrics.jsonl")[-1],
                                                    "kind": "valid", "step": stopped.step}
    # The same config without the budget: the extra evaluation at the stop must not have
    # shifted the random stream that the resumed training continues.
    resumed = Trainer(tiny_config(), run, data=data, resume=True)
    assert resumed.step == stopped.step
    resumed.fit()
    assert_identical(final_checkpoint(run), final_checkpoint(reference_run))


def _biva_command() -> list[str]:
    script = Path(sys.executable).with_name("biva")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "biva.cli.main"]


def _latest_step(run: Path) -> int:
    found = list_checkpoints(run)
    return int(found[-1].name.split("_")[1]) if found else -1


def _logged_train_steps(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_bytes().split(b"\n")[:-1]  # complete lines only
    except FileNotFoundError:
        return []
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") == "train"]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    """Kill `biva train` with SIGKILL mid-run, resume it, compare with an uninterrupted run."""
    steps = 40
    sets = [*TINY, "train.log_every=5", "train.checkpoint_every=10", "train.eval_every=20",
            "train.seed=3"]
    cfg = load_run_config("digits", [*sets, f"train.steps={steps}"])
    reference = tmp_path / "reference"
    Trainer(cfg, reference).fit()  # its own data: the seed also picks the validation split

    run = tmp_path / "killed"
    argv = [*_biva_command(), "train", "--config", "digits", "--steps", str(steps),
            "--run-dir", str(run)]
    for s in sets:
        argv += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        killed_at = None
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                ckpt = _latest_step(run)
                # Kill once a checkpoint >= 10 exists and a log record past it was written (so
                # the resume has records to drop), or at the last checkpoint before the end.
                if ckpt >= 30 or (ckpt >= 10 and max(_logged_train_steps(run) or [0]) > ckpt):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = ckpt
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and killed_at is None:
                proc.kill()
            proc.wait(timeout=60)

    if killed_at is not None and proc.returncode == -signal.SIGKILL:
        assert _latest_step(run) >= 10
    else:
        assert proc.returncode == 0, (tmp_path / "first.log").read_text()
        warnings.warn("the run finished before it could be killed; testing --stop-after instead",
                      stacklevel=1)
        run = tmp_path / "stopped"
        stop_argv = [a if a != str(tmp_path / "killed") else str(run) for a in argv]
        assert main([*stop_argv[len(_biva_command()):], "--stop-after", "25"]) == 0
    resume_from = _latest_step(run)
    assert resume_from < steps
    capsys.readouterr()

    # The resume runs in this process (a second interpreter start-up is slow on a busy machine).
    assert main(["train", "--resume", str(run)]) == 0
    assert f"resumed {run} at step {resume_from}" in capsys.readouterr().out

    assert_identical(final_checkpoint(run, steps), final_checkpoint(reference, steps))
    records = metric_records(run)
    assert_no_duplicate_steps(records)
    assert records == metric_records(reference)


# ----------------------------------------------------------------------------- safe updates


def test_nan_batch_is_skipped_without_touching_weights(tmp_path, data):
    trainer = Trainer(tiny_config(), tmp_path / "run", data=data)
    x = first_batch(trainer)
    stats = trainer.train_step(x)  # one real update, so the optimizer holds state
    assert float(stats["skipped"]) == 0.0 and trainer.guard.skipped == 0
    before = snapshot(trainer)
    assert before["optimizer"]["state"], "optimizer state should be populated"

    x_nan = x.clone()
    x_nan[0, 0, 3, 4] = math.nan
    stats = trainer.train_step(x_nan)
    assert trainer.guard.skipped == 1 and trainer.guard.consecutive_skips == 1
    assert float(stats["skipped"]) == 1.0
    assert not (math.isfinite(float(stats["loss"])) and math.isfinite(float(stats["grad_norm"])))
    assert_untouched(trainer, before)
    assert all(p.grad is None for p in trainer.model.parameters()), "skipped grads left behind"

    stats = trainer.train_step(x)
    assert float(stats["skipped"]) == 0.0
    assert trainer.guard.skipped == 1 and trainer.guard.consecutive_skips == 0
    assert changed_params(trainer, before) > 0
    assert any(not torch.equal(v, before["ema"][k]) for k, v in trainer.ema.state_dict().items())


def test_exploding_gradients_are_skipped_until_the_guard(tmp_path, data):
    cfg = tiny_config("train.skip_threshold=1e-6", "train.max_consecutive_skips=3")
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    x = first_batch(trainer)
    trainer.train_step(x)  # skipped too (grad norm > 1e-6): take a real one for optimizer state
    trainer.guard.consecutive_skips, trainer.guard.skipped = 3, 0
    trainer.train_step(x)
    before = snapshot(trainer)
    assert trainer.guard.consecutive_skips == 0

    for n in range(1, 4):
        stats = trainer.train_step(x)
        assert float(stats["skipped"]) == 1.0
        assert math.isfinite(float(stats["grad_norm"])) and float(stats["grad_norm"]) > 1e-6
        assert trainer.guard.skipped == n and trainer.guard.consecutive_skips == n
        assert_untouched(trainer, before)

    # A non-finite update is never let through, even past the guard.
    x_nan = x.clone()
    x_nan[1, 0, 0, 0] = math.nan
    assert float(trainer.train_step(x_nan)["skipped"]) == 1.0
    assert_untouched(trainer, before)
    assert trainer.guard.consecutive_skips == 4

    # After max_consecutive_skips skips, the (clipped) finite update goes through.
    stats = trainer.train_step(x)
    assert float(stats["skipped"]) == 0.0
    assert trainer.guard.consecutive_skips == 0 and trainer.guard.skipped == 4
    assert changed_params(trainer, before) > 0


def test_skips_are_logged(tmp_path, data):
    cfg = tiny_config("train.skip_threshold=1e-6", "train.max_consecutive_skips=100",
                      steps=4)
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    trainer.fit()
    assert trainer.guard.skipped == 4
    train = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert train[-1]["skipped_total"] == 4 and train[-1]["skipped"] == 1.0


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_parameters_other_seed_differs(tmp_path, data, reference_run):
    again = tmp_path / "again"
    Trainer(tiny_config(), again, data=data).fit()
    assert_identical(final_checkpoint(again), final_checkpoint(reference_run))

    other = tmp_path / "other"
    Trainer(tiny_config("train.seed=1"), other, data=data).fit()
    a, b = final_checkpoint(other)["model"], final_checkpoint(reference_run)["model"]
    differ = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert len(differ) > len(a) // 2


def test_new_run_refuses_a_run_dir_with_checkpoints(tmp_path, data, reference_run):
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(), reference_run, data=data)


def test_resume_of_a_finished_run_is_a_no_op(tmp_path, data, reference_run):
    trainer = Trainer.resume(reference_run, data=data)
    assert trainer.step == STEPS
    before = snapshot(trainer)
    assert trainer.fit() == {}
    assert_untouched(trainer, before)


# ----------------------------------------------------------------------------- schedules


def test_learning_rate_warms_up_then_decays_to_the_floor():
    tc = tiny_config("train.lr=0.01", "train.min_lr=0.001", "train.warmup_steps=10",
                     "train.lr_decay=0.9", steps=100).train
    warm = [learning_rate(tc, s) for s in range(10)]
    assert warm == pytest.approx([0.001 * (s + 1) for s in range(10)])
    assert learning_rate(tc, 9) == pytest.approx(0.01)
    assert learning_rate(tc, 10) == pytest.approx(0.01)
    assert learning_rate(tc, 12) == pytest.approx(0.01 * 0.9**2)
    decay = [learning_rate(tc, s) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert min(decay) == 0.001  # 0.01 * 0.9**t falls below the floor after ~22 steps
    assert learning_rate(tc, 10**6) == 0.001


def test_free_bits_are_zero_during_finetuning():
    tc = tiny_config("train.free_bits=1.5", "train.finetune_steps=10", steps=100).train
    assert [free_bits(tc, s) for s in (0, 50, 89)] == [1.5, 1.5, 1.5]
    assert [free_bits(tc, s) for s in range(90, 100)] == [0.0] * 10
    no_ft = tiny_config("train.free_bits=1.5", "train.finetune_steps=0", steps=100).train
    assert free_bits(no_ft, 99) == 1.5


def test_kl_warmup():
    tc = tiny_config("train.kl_warmup_steps=10", steps=100).train
    assert [kl_weight(tc, s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert kl_weight(tc, 10) == 1.0 and kl_weight(tc, 99) == 1.0
    assert kl_weight(tiny_config("train.kl_warmup_steps=0").train, 0) == 1.0


def test_train_step_passes_the_schedules_to_the_objective(tmp_path, data, monkeypatch):
    import biva.training.trainer as trainer_module

    cfg = tiny_config("train.free_bits=0.75", "train.kl_warmup_steps=8", "train.warmup_steps=4")
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    seen = []
    objective = trainer_module.training_loss

    def spy(out, **kwargs):
        seen.append(kwargs)
        return objective(out, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", spy)
    x = first_batch(trainer)
    for step in (0, STEPS - 3, STEPS - 2, STEPS - 1):  # finetune_steps=2: the last two steps
        trainer.step = step
        stats = trainer.train_step(x)
        assert float(stats["lr"]) == pytest.approx(learning_rate(cfg.train, step))
        assert trainer.optimizer.param_groups[0]["lr"] == learning_rate(cfg.train, step)
    assert [kw["free_bits"] for kw in seen] == [0.75, 0.75, 0.0, 0.0]
    assert [kw["kl_weight"] for kw in seen] == pytest.approx([1 / 8, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- EMA


def test_ema_starts_from_the_initialized_weights(tmp_path, data):
    trainer = Trainer(tiny_config(), tmp_path / "run", data=data)
    assert bool(trainer.model.initialized) and bool(trainer.ema.model.initialized)
    live, ema = trainer.model.state_dict(), trainer.ema.state_dict()
    assert live.keys() == ema.keys()
    for key in live:
        assert torch.equal(live[key], ema[key]), key
    assert ema[key].data_ptr() != live[key].data_ptr()
    # The data-dependent init changed the weights: an EMA copied before it would differ.
    torch.manual_seed(0)
    fresh = HierarchicalVAE(trainer.cfg.model).state_dict()
    assert any(not torch.equal(fresh[k], ema[k]) for k in ema if ema[k].is_floating_point())


def test_ema_update_is_the_exponential_average(tmp_path, data):
    trainer = Trainer(tiny_config("train.ema_decay=0.75", "train.ema_warmup=false"),
                      tmp_path / "run", data=data)
    x = first_batch(trainer)
    trainer.train_step(x)  # EMA and live weights now differ
    old = {k: v.clone() for k, v in trainer.ema.model.named_parameters()}
    trainer.train_step(x)
    new = dict(trainer.model.named_parameters())
    for key, value in trainer.ema.model.named_parameters():
        expected = 0.75 * old[key].double() + 0.25 * new[key].detach().double()
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
        assert not value.requires_grad
    assert any(not torch.equal(old[k], v) for k, v in trainer.ema.model.named_parameters())
    for (name, b_ema), b_live in zip(trainer.ema.model.named_buffers(), trainer.model.buffers(),
                                     strict=True):
        assert torch.equal(b_ema, b_live), name


def test_ema_warmup_uses_the_smaller_decay_early_and_survives_resume(tmp_path, data):
    trainer = Trainer(tiny_config("train.ema_decay=0.75"), tmp_path / "run", data=data)
    assert trainer.ema.current_decay() == pytest.approx(0.1)    # (1 + 0) / (10 + 0)
    x = first_batch(trainer)
    old = {k: v.clone() for k, v in trainer.ema.model.named_parameters()}
    trainer.train_step(x)
    new = dict(trainer.model.named_parameters())
    for key, value in trainer.ema.model.named_parameters():
        expected = 0.1 * old[key].double() + 0.9 * new[key].detach().double()
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    trainer.ema.updates = 100
    assert trainer.ema.current_decay() == 0.75                   # capped by ema_decay
    trainer.step = 1
    trainer.save()
    resumed = Trainer.resume(tmp_path / "run", data=data)
    assert resumed.ema.updates == 100


def test_ema_on_a_small_module():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    old = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for p_ema, p_old, p_new in zip(ema.model.parameters(), old, model.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_new.detach(), rtol=1e-6,
                                   atol=1e-7)
    assert ema.model.training is False


@pytest.mark.parametrize("override,field", [
    ("train.keep_last=0", "train.keep_last"), ("train.keep_last=-1", "train.keep_last"),
    ("train.grad_clip=-1", "train.grad_clip"), ("train.grad_clip=0", "train.grad_clip"),
    ("train.skip_threshold=-1", "train.skip_threshold"),
    ("train.skip_threshold=0", "train.skip_threshold"),
    ("train.skip_factor=0.5", "train.skip_factor"),
    ("train.skip_min_history=500", "train.skip_min_history"),
    ("train.threads=-3", "train.threads"), ("train.amp=fp8", "train.amp"),
    ("train.max_bad_steps=0", "train.max_bad_steps"),
    # .nan / .inf parse as YAML floats: refused when read, not when config.json is written.
    ("train.lr=.nan", "train.lr"), ("train.grad_clip=.inf", "train.grad_clip"),
    ("train.free_bits=-.inf", "train.free_bits")])
def test_recipe_values_that_would_lose_a_run_or_train_backwards_are_refused(override, field):
    from biva.config import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(override)


def test_auto_skip_threshold_follows_the_median_gradient_norm(tmp_path, data):
    """skip_threshold=auto: nothing finite is skipped in the lr warm-up or until
    skip_min_history norms are known, then norms above skip_factor x their median are; the
    norms travel with the checkpoint."""
    cfg = tiny_config("train.skip_min_history=3", "train.skip_factor=2.0", "train.steps=4",
                      "train.checkpoint_every=4", "train.warmup_steps=2")
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    assert trainer.guard.threshold(trainer.step) == math.inf
    x = first_batch(trainer)
    for _ in range(3):
        assert float(trainer.train_step(x)["skipped"]) == 0.0
    norms = list(trainer.guard.grad_norms)
    assert len(norms) == 3
    trainer.step = 1  # still warming up: no threshold, whatever the norms
    assert trainer.guard.threshold(trainer.step) == math.inf
    trainer.step = 2
    assert trainer.guard.threshold(trainer.step) == pytest.approx(2.0 * sorted(norms)[1])
    # A gradient 10x the usual is skipped.
    trainer.guard.grad_norms.clear()
    trainer.guard.grad_norms.extend([norms[0] / 10] * 3)
    assert float(trainer.train_step(x)["skipped"]) == 1.0
    trainer.step = 4
    trainer.save()
    resumed = Trainer.resume(tmp_path / "run", data=data)
    assert list(resumed.guard.grad_norms) == list(trainer.guard.grad_norms)


# ----------------------------------------------------------------------------- faults (issue 15)


def test_sigterm_writes_a_checkpoint_and_resumes_bit_identically(tmp_path, data, reference_run,
                                                                 monkeypatch):
    """SIGTERM (a scheduler's warning) stops at the next step boundary with a checkpoint at
    that step, exit status 143; the resume equals an uninterrupted run."""
    from biva.training.trainer import TrainingInterrupted

    run = tmp_path / "run"
    trainer = Trainer(tiny_config(), run, data=data)
    step = trainer.train_step

    def step_then_signal(x, y=None):
        out = step(x, y)
        if trainer.step == 4:  # the 6th update is under way: it finishes, then the stop
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.signum == signal.SIGTERM and "--resume" in str(info.value)
    assert _latest_step(run) == 5 == trainer.step  # not a checkpoint_every step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = Trainer.resume(run, data=data)
    resumed.fit()
    assert_identical(final_checkpoint(run), final_checkpoint(reference_run))


def test_sigterm_exit_status_from_the_command_line(tmp_path):
    argv = [*_biva_command(), "train", "--config", "digits", "--steps", "100000",
            "--run-dir", str(tmp_path / "run")]
    for s in [*TINY, "train.log_every=1"]:
        argv += ["--set", s]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not _logged_train_steps(tmp_path / "run") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM at step" in out and "biva train --resume" in out
    assert _latest_step(tmp_path / "run") >= 1


def test_second_writer_on_a_run_dir_is_refused_and_a_dead_ones_lock_is_not(tmp_path, data):
    """Two processes on one run dir: the second is refused, naming the holder's pid; a lock
    file left by a killed process does not block a resume."""
    run = tmp_path / "run"
    code = ("import sys, time; from biva.utils.run_lock import lock_run_dir; "
            "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(RuntimeError, match=rf"in use by another biva process \(pid "
                                               rf"{holder.pid} on host"):
            Trainer(tiny_config(), run, data=data)
        assert not (run / "config.json").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").is_file()  # the dead holder's file is still there...
    Trainer(tiny_config(), run, data=data).fit()  # ...and blocks nothing


def test_stale_checkpoint_temporaries_are_removed_on_start(tmp_path, data):
    run = tmp_path / "run"
    Trainer(tiny_config(steps=4), run, data=data).fit()
    half = run / "checkpoints" / ".step_000000006.tmp-0123abcd"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"x" * 1000)
    doomed = run / "checkpoints" / ".step_000000002.del-89abcdef"
    doomed.mkdir()
    # Left by atomic file writes killed midway (they were once kept forever).
    leftovers = [run / ".metrics.jsonl.tmp-0123abcd", run / ".config.json.tmp-00ff00ff",
                 run / "figures" / ".samples_latest.png.tmp-abcdef01"]
    for path in leftovers:
        path.write_bytes(b"partial")
    # The previous best moved aside while best/ was replaced: best/ exists, so it goes.
    old_best = run / "checkpoints" / ".best.old-11112222"
    shutil.copytree(run / "checkpoints" / "best", old_best)
    resumed = Trainer.resume(run, data=data)
    assert not half.exists() and not doomed.exists() and not old_best.exists()
    assert not any(p.exists() for p in leftovers)
    assert resumed.step == 4
    json.loads((run / "config.json").read_text())


def test_a_kill_between_the_renames_of_best_restores_the_old_best(tmp_path, data):
    """atomic_directory moves best/ aside, then renames the new one in: a kill between the two
    leaves .best.old-* as the only copy; it is renamed back, not deleted."""
    run = tmp_path / "run"
    Trainer(tiny_config(steps=4), run, data=data).fit()
    best = run / "checkpoints" / "best"
    before = (best / "meta.json").read_bytes()
    aside = run / "checkpoints" / ".best.old-33334444"
    best.rename(aside)
    Trainer.resume(run, data=data)
    assert not aside.exists() and (best / "meta.json").read_bytes() == before
    load_checkpoint(best)


def test_diverged_run_stops_with_an_error_keeping_its_checkpoints(tmp_path, data):
    """lr = 1e3: updates turn non-finite and are skipped; after max_bad_steps in a row the run
    stops with a clear error (exit 2 from the CLI) instead of 'finishing' with ELBO -inf, and
    no checkpoint of the stalled state replaces the earlier ones."""
    from biva.training.trainer import TrainingStalled

    cfg = tiny_config("train.lr=1000", "train.warmup_steps=0", "train.max_bad_steps=6",
                      "train.max_consecutive_skips=2", "train.checkpoint_every=1", steps=400)
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    with pytest.raises(TrainingStalled, match=r"6 updates in a row .* Lower train\.lr \(now "
                                              r"1000\)"):
        trainer.fit()
    assert trainer.step < 400 and trainer.guard.bad_streak == 6
    # Checkpoints stop once the streak reaches max_consecutive_skips (2): the newest is from
    # the streak's first step at the latest, not from the stalled state that followed.
    first_bad = trainer.step - trainer.guard.bad_streak + 1
    assert 0 < _latest_step(tmp_path / "run") <= first_bad


def test_resumed_first_record_counts_its_steps(tmp_path, data):
    """After a resume from a step between two logs, the first train record averages fewer
    steps than log_every: every record says how many it averages."""
    run = tmp_path / "run"
    stopped = Trainer(tiny_config(), run, data=data, stop_after=5)
    stopped.fit()
    stopped.save()  # a checkpoint at step 5, as SIGTERM or a time budget writes
    Trainer.resume(run, data=data).fit()
    by_step = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"}
    assert by_step[4]["n_steps"] == 4  # log_every = 4
    assert by_step[8]["n_steps"] == 3  # steps 6, 7, 8 after the resume at 5
    assert by_step[12]["n_steps"] == 4
    # CPU time is carried over the resume: it never goes back.
    cpu = [r["cpu_s"] for r in read_jsonl(run / "metrics.jsonl")]
    assert cpu[0] > 0 and cpu == sorted(cpu)


@pytest.mark.parametrize("edit,field", [({"step": "abc"}, r"state\.step: expected an int"),
                                        ({"skipped": None}, r"state\.skipped"),
                                        ({"rng": None}, r"state\.rng is missing")])
def test_malformed_checkpoint_state_names_the_file_and_key(tmp_path, data, edit, field):
    """A checkpoint whose state lacks a key or holds a wrong type (written with a valid digest,
    e.g. by other code) fails with one line naming meta.json and the key, not a KeyError."""
    from biva.utils.checkpoint import CheckpointError, save_checkpoint

    run = tmp_path / "run"
    Trainer(tiny_config(steps=4), run, data=data).fit()
    path = run / "checkpoints" / "step_000000004"
    tensors, state = load_checkpoint(path)
    state = {k: v for k, v in {**state, **edit}.items() if v is not None}
    save_checkpoint(path, tensors=tensors, state=state)
    with pytest.raises(CheckpointError, match=rf"step_000000004/meta\.json: {field}"):
        Trainer.resume(run, data=data)


def test_a_model_too_big_for_the_machine_is_refused_before_allocating(tmp_path, data):
    """model.filters=[4096] on the digits is ~7.6e9 parameters: refused up front from a pass on
    the meta device, naming the fields, instead of allocating until the allocator fails."""
    with pytest.raises(MemoryError, match=r"model\.filters=\[4096\].*GiB free"):
        Trainer(tiny_config("model.filters=[4096]"), tmp_path / "run", data=data)
    assert not (tmp_path / "run" / "config.json").exists()


def test_disk_full_is_one_line_naming_the_directory_and_keeps_checkpoints(tmp_path, data,
                                                                        monkeypatch, capsys):
    """A fault-injecting writer (a real full disk needs a small mount, which tests may not
    create): ENOSPC while writing the step-8 checkpoint. The step-4 checkpoint survives, the
    error names the run directory and the space a checkpoint needs, and the CLI prints one
    line and exits 2."""
    import errno

    import biva.training.run_directory as run_directory
    from biva.training.trainer import DiskFull

    real_save = run_directory.save_checkpoint

    def full_after_step_4(path, **kw):
        if path.name == "step_000000008":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, **kw)

    monkeypatch.setattr(run_directory, "save_checkpoint", full_after_step_4)
    run = tmp_path / "run"
    with pytest.raises(DiskFull, match=rf"no space left on the device of {run} writing "
                                       rf".*step_000000008.*a checkpoint needs about \d+ MiB"):
        Trainer(tiny_config(), run, data=data).fit()
    assert _latest_step(run) == 4
    argv = ["train", "--resume", str(run)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "Traceback" not in err[0]
    monkeypatch.setattr(run_directory, "save_checkpoint", real_save)
    assert main(argv) == 0 and _latest_step(run) == STEPS


@pytest.mark.parametrize("edit,field", [
    ({"model": {"filters": [16]}}, "model.filters"),      # once 152 lines of size mismatch
    ({"train": {"lr": 0.01}}, "train.lr"),                # once taken silently
    ({"model": {"dropout_q": 0.3}}, "model.dropout_q"),
])
def test_editing_config_json_behind_bivas_back_is_refused_on_resume(tmp_path, data, capsys,
                                                                     edit, field):
    run = tmp_path / "run"
    Trainer(tiny_config(), run, data=data, stop_after=4).fit()
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    for section, values in edit.items():
        cfg[section].update(values)
    path.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "size mismatch" not in err[0], err
    assert str(path) in err[0] and f"{field}:" in err[0] and "--init-from" in err[0], err[0]


def test_a_budget_edit_of_config_json_still_resumes(tmp_path, data):
    run = tmp_path / "run"
    Trainer(tiny_config(), run, data=data, stop_after=4).fit()
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["steps"] = STEPS + 4
    cfg["train"]["threads"] = 1
    (run / "config.json").write_text(json.dumps(cfg))
    trainer = Trainer.resume(run)
    trainer.fit()
    assert trainer.step == STEPS + 4


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path, data, capsys):
    """What the refusal above proposes: a new run from the old weights with the new lr."""
    run = tmp_path / "run"
    Trainer(tiny_config(), run, data=data, stop_after=4).fit()
    ckpt = list_checkpoints(run)[-1]
    tensors, _ = load_checkpoint(ckpt)
    new = tmp_path / "new"
    assert main(["train", "--config", str(run / "config.json"), "--init-from", str(ckpt),
                 "--run-dir", str(new), "--set", "train.lr=0.001", "--stop-after", "1",
                 "--no-progress"]) == 0
    started = Trainer.resume(new, stop_after=0)
    assert started.step == 1 and started.cfg.train.lr == 0.001
    # The new run's EMA began from the old run's EMA (one update with decay >= 0.1 since).
    for name, old in tensors["ema"].items():
        now = started.ema.state_dict()[name]
        if not old.is_floating_point():
            assert torch.equal(now, old), name
            continue
        assert torch.allclose(now, old, atol=0.2 * (old.abs().max().item() + 1e-3)), name
    assert json.loads((new / "config.json").read_text())["train"]["init_from"] == str(ckpt)
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", "--config", str(run / "config.json"), "--init-from", str(ckpt),
                 "--run-dir", str(other), "--set", "model.filters=[16]", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not have this config's architecture" in err and "Traceback" not in err
