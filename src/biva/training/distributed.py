"""Data-parallel training under ``torchrun``: process-group set-up and the trainer's collectives.

``biva train`` launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1 in the
environment) joins the process group here: NCCL when the run trains on CUDA, gloo on CPU. Every
rank builds the same model; DistributedDataParallel averages the gradients, so a step on N
ranks with a global batch of B (B/N rows each) is the step of one process on B rows.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from biva.utils.seeds import derive_seed

# Rank 0 validates and writes checkpoints while the other ranks wait in the next collective or
# at a barrier; on a CPU that can take minutes, longer than NCCL's 10-minute default.
TIMEOUT = datetime.timedelta(minutes=60)


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when launched without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_distributed(device: str = "auto") -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; returns whether distributed.

    NCCL (each rank on GPU ``LOCAL_RANK``) when ``device`` resolves to CUDA, gloo otherwise.
    A no-op for a single process or an already initialized group.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if _wants_cuda(device):
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        try:  # device_id binds the rank to its GPU (torch >= 2.3)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=local)
        except TypeError:
            dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return True


def destroy_distributed() -> None:
    """Leave the process group (if any); call once at exit, on every rank."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (one all-reduce, one sync)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_across_ranks(values: dict[str, torch.Tensor],
                         device: torch.device) -> dict[str, torch.Tensor]:
    """Mean over ranks of each tensor in ``values`` (same keys and shapes on every rank).

    One all-reduce of all values packed on ``device`` (the rank's device: NCCL needs CUDA).
    """
    if not is_distributed() or not values:
        return values
    keys = list(values)
    flat = torch.cat([values[k].detach().to(device, torch.float32).reshape(-1) for k in keys])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    out, at = {}, 0
    for k in keys:
        n = values[k].numel()
        out[k] = flat[at:at + n].view(values[k].shape)
        at += n
    return out


def seed_rank_step(seed: int, rank: int, step: int) -> None:
    """Seed the global torch RNG from (seed, rank, step).

    Used at every distributed training step: each rank draws its own latent and dropout noise
    (rank 0's RNG state restored on every rank would correlate them), and a resumed run draws
    exactly what the uninterrupted one did without saving one RNG state per rank.
    """
    torch.manual_seed(derive_seed(seed, "train-step", rank, step) % (2**63))
