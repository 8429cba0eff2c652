"""Will a training step fit? An estimate from one pass on the meta device, before allocating.

Building the model and running its forward pass on PyTorch's "meta" device allocates nothing
and takes a second even for billions of parameters; the tensors autograd saves for the backward
pass in that forward are the activation memory of a real step.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

GIB = 1024 ** 3
# Per parameter in training: the weights, their gradient, Adamax's two moments, the EMA copy.
COPIES_PER_PARAMETER = 5


def estimate_step_bytes(build: Callable[[], nn.Module], input_shape: tuple[int, ...],
                        batch_size: int) -> tuple[int, int, int | None]:
    """(parameters, parameter bytes in training, activation bytes or None) of one step on a
    batch (batch_size, *input_shape) in float32; activations None when the meta pass fails."""
    with torch.device("meta"):
        model = build()
    n_params = sum(p.numel() for p in model.parameters())
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    try:
        x = torch.zeros((batch_size, *input_shape), device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        activations: int | None = saved
    except Exception:  # a model whose forward needs real values: parameters alone
        activations = None
    return n_params, n_params * 4 * COPIES_PER_PARAMETER, activations


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CUDA: free device memory; CPU: MemAvailable on
    Linux); None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_step_fits(build: Callable[[], nn.Module], input_shape: tuple[int, ...],
                    batch_size: int, device: torch.device, fields: str) -> None:
    """Raise MemoryError (one line naming ``fields``) when a training step would need more
    memory than ``device`` has free; silent when it fits or when the free memory is unknown."""
    free = available_bytes(device)
    if free is None or os.environ.get("BIVA_SKIP_MEMORY_CHECK"):
        return
    n_params, param_bytes, act_bytes = estimate_step_bytes(build, input_shape, batch_size)
    need = param_bytes + (act_bytes or 0)
    if need <= free:
        return
    acts = (f", activations {act_bytes / GIB:.1f} GiB for a batch of {batch_size}"
            if act_bytes is not None else "")
    raise MemoryError(
        f"{fields}: one training step needs about {need / GIB:.1f} GiB ({n_params / 1e6:,.0f}M "
        f"parameters: {param_bytes / GIB:.1f} GiB with gradients, Adamax state and EMA{acts}) "
        f"but {device} has {free / GIB:.1f} GiB free; shrink one of the model fields named "
        f"first or train.batch_size (set BIVA_SKIP_MEMORY_CHECK=1 to try anyway)")


def describe_fields(cfg) -> str:
    """The config fields that size a model, for :func:`check_step_fits` messages."""
    m = cfg.model
    depth = f"model.spec={m.spec!r}" if m.topdown else f"model.blocks={m.blocks}"
    return (f"model.filters={list(m.filters)}, {depth}, "
            f"model.latents={list(m.latents)}, train.batch_size={cfg.train.batch_size}")


__all__ = ["estimate_step_bytes", "available_bytes", "check_step_fits", "describe_fields"]
