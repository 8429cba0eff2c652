"""Data-parallel training on CPU: 2 gloo processes against 1 process with the same global batch.

A tiny BIVA on the 8x8 digits. The two layouts draw different latent noise (each rank seeds its
own stream), so their losses can only be compared exactly at a deterministic quantity: the
equivalence run sets dropout to 0 and replaces every latent draw by the posterior mean
(z = mu, the reparameterization with eps = 0). Then the loss and the gradient norm of a
2-rank step on B rows each must equal a 1-process step on the same 2B rows, up to float
reassociation (rtol 1e-5 on the first step, 1e-4 after a few Adamax updates). Averaging the
gradients wrongly (a sum), giving both ranks the same rows or a wrong slice all break it.

The consistency run keeps the real noise and dropout: after a few steps every rank must hold
bit-identical parameters, EMA and optimizer statistics, rank 0 alone writes files, and a run
stopped and resumed under 2 ranks ends bit-identical to an uninterrupted 2-rank run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from tiny import digits_config

from biva.data import load_run_data
from biva.nn.gaussian import DiagonalGaussian
from biva.objectives.training import training_loss
from biva.training import Trainer
from biva.training.distributed import destroy_distributed, init_distributed
from biva.utils.checkpoint import list_checkpoints, load_checkpoint
from biva.utils.jsonl import read_jsonl

# Slow: the two-rank fixture starts a real process group and trains twice (20 s of set-up).
pytestmark = [pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
              pytest.mark.slow]

GLOBAL_BATCH = 32        # 16 rows per rank
WORLD = 2
# The tiny run of tests/tiny.py (tiny.BASE), and this file's own intervals and sizes.
TINY = ["train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4",
        f"train.batch_size={GLOBAL_BATCH}", "train.finetune_steps=0", "eval.n_samples=2",
        "data.valid_size=1150"]
EQUIV_STEPS = 4
RUN_STEPS = 8


def tiny_config(*extra: str, steps: int):
    return digits_config(*TINY, *extra, steps=steps)


def deterministic_config():
    # fp32: bf16 rounds a 16-row and a 32-row batch differently, beyond the tolerance.
    return tiny_config("model.dropout_q=0", "model.dropout_p=0", "train.amp=none",
                       steps=EQUIV_STEPS)


def _posterior_mean(self, temperature=1.0, noise=None):
    return self.mu  # eps = 0: the pass is a deterministic function of weights and data


def run_steps(trainer: Trainer, n: int) -> list[dict]:
    """n steps as Trainer.fit takes them; per-step loss and gradient norm (this rank's)."""
    stream, out = trainer._batches(), []
    for _ in range(n):
        _, images, _ = next(stream)
        stats = trainer.train_step(trainer._batch(images))
        trainer.step += 1
        out.append({"loss": float(stats["loss"]), "grad_norm": float(stats["grad_norm"]),
                    "rows": int(images.shape[0])})
    return out


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    opt = trainer.optimizer.state_dict()["state"]
    tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    tensors.update({f"opt.{i}.{k}": v for i, s in opt.items() for k, v in s.items()
                    if torch.is_tensor(v)})
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    torch.set_num_threads(1)
    assert init_distributed("cpu")
    try:
        assert dist.get_backend() == "gloo"
        out_dir = Path(out)
        data = load_run_data(deterministic_config())

        # 1. Equivalence at a deterministic quantity (no dropout, z = mu).
        original = DiagonalGaussian.sample
        DiagonalGaussian.sample = _posterior_mean
        try:
            trainer = Trainer(deterministic_config(), out_dir / "equiv", data=data)
            stats = run_steps(trainer, EQUIV_STEPS)
        finally:
            DiagonalGaussian.sample = original
        (out_dir / f"equiv_rank{rank}.json").write_text(json.dumps(stats))

        # 2. Real noise and dropout: identical state on every rank after a few steps.
        trainer = Trainer(tiny_config(steps=RUN_STEPS), out_dir / "full", data=data)
        trainer.fit()
        save_file(state_of(trainer), str(out_dir / f"full_rank{rank}.safetensors"))

        # 3. Stop at step 6 (with its checkpoint, written by rank 0 while the other rank
        # waits), resume, finish: as the uninterrupted run.
        Trainer(tiny_config(steps=RUN_STEPS), out_dir / "resumed", data=data,
                stop_after=6).fit()
        resumed = Trainer.resume(out_dir / "resumed", data=data)
        assert resumed.step == 6, resumed.step
        resumed.fit()
    finally:
        destroy_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run the three 2-rank scenarios once (spawned gloo processes); their output folder."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def data():
    return load_run_data(deterministic_config())


@pytest.mark.slow
def test_two_ranks_of_b_rows_match_one_process_of_2b_rows(two_ranks, data, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(DiagonalGaussian, "sample", _posterior_mean)
    single = run_steps(Trainer(deterministic_config(), tmp_path / "one", data=data), EQUIV_STEPS)
    ranks = [json.loads((two_ranks / f"equiv_rank{r}.json").read_text()) for r in range(WORLD)]
    for step, one in enumerate(single):
        assert one["rows"] == GLOBAL_BATCH
        assert [r[step]["rows"] for r in ranks] == [GLOBAL_BATCH // WORLD] * WORLD
        # Each rank saw its own half of the batch ...
        assert ranks[0][step]["loss"] != ranks[1][step]["loss"]
        # ... and the mean of the halves' losses is the full batch's loss; DDP's averaged
        # gradient is the full batch's gradient (the same norm on every rank).
        rtol = 1e-5 if step == 0 else 1e-4
        mean_loss = sum(r[step]["loss"] for r in ranks) / WORLD
        assert mean_loss == pytest.approx(one["loss"], rel=rtol), step
        for r in ranks:
            assert r[step]["grad_norm"] == pytest.approx(one["grad_norm"], rel=rtol), step


def test_first_rank_sees_the_first_half_of_the_global_batch(two_ranks, data, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(DiagonalGaussian, "sample", _posterior_mean)
    trainer = Trainer(deterministic_config(), tmp_path / "one", data=data)
    _, images, _ = next(trainer._batches())
    x = trainer._batch(images[:GLOBAL_BATCH // WORLD])
    trainer.model.train()
    out = trainer.model(x)
    loss = float(training_loss(out, free_bits=trainer.cfg.train.free_bits).detach())
    rank0 = json.loads((two_ranks / "equiv_rank0.json").read_text())[0]["loss"]
    assert rank0 == pytest.approx(loss, rel=1e-5)


def test_all_ranks_hold_identical_parameters_ema_and_optimizer_state(two_ranks):
    states = [load_file(str(two_ranks / f"full_rank{r}.safetensors")) for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    assert any(k.startswith("ema.") for k in states[0])
    assert any(k.startswith("opt.") for k in states[0])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_rank0_writes_files_once(two_ranks):
    run = two_ranks / "full"
    records = read_jsonl(run / "metrics.jsonl")
    train = [r["step"] for r in records if r["kind"] == "train"]
    valid = [r["step"] for r in records if r["kind"] == "valid"]
    assert train == [2, 4, 6, 8] and valid == [4, 8]
    assert [p.name for p in list_checkpoints(run)] == ["step_000000004", "step_000000008"]
    # The checkpoint holds the trained weights of every rank (they are identical).
    tensors, state = load_checkpoint(run / "checkpoints" / "step_000000008")
    final = load_file(str(two_ranks / "full_rank1.safetensors"))
    assert state["step"] == RUN_STEPS
    for key, value in tensors["model"].items():
        assert torch.equal(value, final[f"model.{key}"]), key


def test_resume_under_two_ranks_is_bit_identical(two_ranks):
    a, _ = load_checkpoint(two_ranks / "full" / "checkpoints" / "step_000000008")
    b, _ = load_checkpoint(two_ranks / "resumed" / "checkpoints" / "step_000000008")
    for group in ("model", "ema", "optimizer"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), f"{group}/{key}"
    strip = [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "cpu_s")}
             for r in read_jsonl(two_ranks / "resumed" / "metrics.jsonl")]
    ref = [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "cpu_s")}
           for r in read_jsonl(two_ranks / "full" / "metrics.jsonl")]
    assert strip == ref


@pytest.mark.slow
@pytest.mark.extended
def test_biva_train_under_torchrun_then_resume(tmp_path):
    """The CLI joins the process group itself: launch, stop, resume with torchrun."""
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={WORLD}", "-m", "biva.cli.main", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = [a for s in TINY for a in ("--set", s)]
    first = subprocess.run([*launch, "--config", "digits", "--steps", str(RUN_STEPS),
                            "--run-dir", str(run), "--stop-after", "5", *sets],
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    # --stop-after 5 writes the checkpoint of step 5 (rank 0, the other rank at the barrier).
    assert [p.name for p in list_checkpoints(run)] == ["step_000000004", "step_000000005"]
    second = subprocess.run([*launch, "--resume", str(run)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("at step 5 from step_000000005") == 1  # rank 0 prints it
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [2, 4, 6, 8]
    _, state = load_checkpoint(run / "checkpoints" / "step_000000008")
    assert state["step"] == RUN_STEPS
