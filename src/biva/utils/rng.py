"""Seeding and exact capture/restore of the Python, NumPy and torch (CPU + CUDA) RNG states.

States are split into tensors (the large generator arrays, stored in a checkpoint's safetensors)
and a small JSON-able dict (positions, cached Gaussians), matching ``save_checkpoint``'s layout::

    rng_tensors, rng_meta = capture_rng_state()
    save_checkpoint(path, tensors={"rng": rng_tensors, ...}, state={"rng": rng_meta, ...})
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_STATE_VERSION", "capture_rng_state", "restore_rng_state", "seed_everything",
           "seeded_eval"]

RNG_STATE_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seeding only takes 32 bits
    torch.manual_seed(seed)  # also seeds all CUDA devices (lazily if CUDA is not initialized)


@contextlib.contextmanager
def seeded_eval(model: torch.nn.Module, seed: int | None) -> Iterator[None]:
    """Eval mode and no_grad for the block, with torch's global RNG (which the models' latent
    draws use) forked and seeded: a seeded evaluation is reproducible and leaves the caller's
    RNG where it was. ``seed=None``: unseeded. The training mode is restored afterwards."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                   enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Snapshot all RNG states as ``(tensors, meta)``; restore with :func:`restore_rng_state`."""
    py_version, py_internal, py_gauss_next = random.getstate()
    np_state = np.random.get_state()
    if not isinstance(np_state, tuple) or np_state[0] != "MT19937":
        raise RuntimeError("NumPy's global RandomState does not use MT19937; cannot capture it")
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np_state

    tensors: dict[str, torch.Tensor] = {
        # MT words are < 2**32; int64 holds them exactly (safetensors has no uint32 in torch<2.3).
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "torch_cpu": torch.get_rng_state(),
    }
    cuda_devices = 0
    # Only when CUDA is already in use: querying would otherwise create a context on every GPU
    # of a CPU-only run, and an unused CUDA generator has nothing worth restoring.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.cpu()
            cuda_devices += 1
    meta: dict[str, Any] = {
        "version": RNG_STATE_VERSION,
        "python": {"version": py_version, "gauss_next": py_gauss_next},
        "numpy": {"algorithm": np_name, "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_cached)},
        "cuda_devices": cuda_devices,
    }
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (CUDA states need matching GPUs)."""
    version = meta.get("version")
    if version != RNG_STATE_VERSION:
        raise ValueError(f"unknown RNG state version {version!r} (expected {RNG_STATE_VERSION})")
    missing = [k for k in ("python", "numpy", "torch_cpu") if k not in tensors]
    if missing:
        raise KeyError(f"RNG state is missing tensors {missing}")

    py = meta["python"]
    internal = tuple(int(x) for x in tensors["python"].tolist())
    gauss_next = py["gauss_next"]
    random.setstate((int(py["version"]), internal,
                     None if gauss_next is None else float(gauss_next)))

    npm = meta["numpy"]
    np.random.set_state((
        npm["algorithm"],
        tensors["numpy"].cpu().numpy().astype(np.uint32),
        int(npm["pos"]),
        int(npm["has_gauss"]),
        float(npm["cached_gaussian"]),
    ))

    torch.set_rng_state(tensors["torch_cpu"].detach().to("cpu", torch.uint8))

    saved = int(meta.get("cuda_devices", 0))
    if saved == 0:
        return
    if not torch.cuda.is_available():
        warnings.warn(f"checkpoint holds RNG states for {saved} CUDA device(s) but CUDA is not "
                      "available; CUDA RNG states not restored", RuntimeWarning, stacklevel=2)
        return
    available = torch.cuda.device_count()
    if available != saved:
        warnings.warn(f"checkpoint holds RNG states for {saved} CUDA device(s), this machine has "
                      f"{available}; restoring the first {min(saved, available)}",
                      RuntimeWarning, stacklevel=2)
    for i in range(min(saved, available)):
        torch.cuda.set_rng_state(tensors[f"cuda.{i}"].detach().to("cpu", torch.uint8), device=i)
