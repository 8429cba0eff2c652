"""What a trainer settles before its first step: where it runs (ranks, device, precision),
whether the data fits the model config, and weights to start from (``train.init_from``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from biva.config.run import RunConfig
from biva.data import DatasetSplits, num_batches
from biva.training.precision import resolve_amp
from biva.utils.checkpoint import load_checkpoint
from biva.utils.device import resolve_device
from biva.utils.machine import limit_threads_to_idle_cores


@dataclass(frozen=True)
class Placement:
    """Where one training process runs: its rank among ``world`` (1 without torchrun), its
    device and its precision ("bf16" autocast or "none")."""

    distributed: bool
    rank: int
    world: int
    device: torch.device
    amp: str


def place_process(cfg: RunConfig) -> Placement:
    """Threads, device and precision of this process (``train.threads``, ``train.device``,
    ``train.amp``); under torchrun the rank's own CUDA device. Rank 0 prints the precision."""
    tc = cfg.train
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    elif device.type == "cpu" and not distributed and (why := limit_threads_to_idle_cores()):
        print(why, flush=True)
    amp, why = resolve_amp(tc.amp, device)
    if rank == 0:
        print(f"precision: {'bf16 autocast' if amp == 'bf16' else 'fp32'} ({why})")
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return Placement(distributed, rank, world, device, amp)


def check_data_fits(cfg: RunConfig, data: DatasetSplits, world: int) -> int:
    """Refuse, naming the field, data the model config cannot train on (image shape, kind
    vs likelihood, a batch larger than the training split or not divisible by the ranks);
    returns the steps of an epoch (one global batch a step)."""
    tc = cfg.train
    shape, want = tuple(data.shape), tuple(cfg.model.input_shape)
    if shape != want:
        raise ValueError(f"dataset {data.name!r} has images of shape {shape} but "
                         f"model.input_shape is {want}")
    expected = {"binary": "bernoulli", "8bit": "discretized_logistic"}[data.kind]
    if cfg.model.likelihood != expected:
        raise ValueError(f"dataset {data.name!r} holds {data.kind} data, which needs "
                         f"model.likelihood={expected!r}; found {cfg.model.likelihood!r}")
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} (the global batch) must be a "
                         f"multiple of the {world} ranks")
    steps = num_batches(len(data.train), tc.batch_size, True)
    if steps == 0:
        n = len(data.train)
        raise ValueError(f"train.batch_size={tc.batch_size} exceeds the {n} training "
                         f"examples: pass --set train.batch_size={n} (or fewer)")
    return steps


def load_init_weights(model: torch.nn.Module, path: Path, device: torch.device) -> dict:
    """``train.init_from``: load another run's model weights into ``model``; returns the
    checkpoint's tensor groups (its "ema" too, if any). A checkpoint of another architecture
    is refused, naming the first mismatch."""
    tensors, _ = load_checkpoint(path, map_location=device)
    weights = tensors.get("model")
    if weights is None:
        raise ValueError(f"train.init_from={path}: holds no model weights")
    weights = model.upgrade_state_dict(weights)   # a checkpoint of older code: its names
    mine = model.state_dict()
    missing = sorted(set(mine) - set(weights))
    bad = [k for k in mine if k in weights and weights[k].shape != mine[k].shape]
    if missing or bad:
        first = (f"{bad[0]}: {tuple(weights[bad[0]].shape)} there, "
                 f"{tuple(mine[bad[0]].shape)} here" if bad else f"{missing[0]} missing")
        raise ValueError(
            f"train.init_from={path}: the checkpoint's model does not have this config's "
            f"architecture ({len(bad)} tensors of another shape, {len(missing)} missing; "
            f"{first}); init_from keeps the model.* fields of the run it comes from")
    model.load_state_dict(weights)
    return tensors
