"""Tests for biva.utils.rng: seeding and exact RNG state capture/restore."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from biva.utils.checkpoint import load_checkpoint, save_checkpoint
from biva.utils.rng import capture_rng_state, restore_rng_state, seed_everything


def _draw() -> tuple:
    # gauss()/normal() cache a second value, which is part of the state that must round trip.
    return (
        [random.random() for _ in range(3)], random.gauss(0, 1), random.getrandbits(64),
        np.random.rand(3).tolist(), np.random.normal(size=3).tolist(),
        np.random.randint(0, 1000, size=3).tolist(),
        torch.rand(3).tolist(), torch.randn(3).tolist(), torch.randint(0, 1000, (3,)).tolist(),
    )


def test_capture_restore_gives_identical_draws() -> None:
    seed_everything(123)
    random.gauss(0, 1)
    np.random.normal()  # leave a cached Gaussian in both generators
    tensors, meta = capture_rng_state()
    first = _draw()
    restore_rng_state(tensors, meta)
    assert _draw() == first


def test_restore_through_a_checkpoint(tmp_path: Path) -> None:
    seed_everything(7)
    _draw()
    tensors, meta = capture_rng_state()
    path = save_checkpoint(tmp_path / "c", tensors={"rng": tensors}, state={"rng": meta})
    expected = _draw()
    seed_everything(999)  # scramble everything
    _draw()
    groups, state = load_checkpoint(path)
    restore_rng_state(groups["rng"], state["rng"])
    assert _draw() == expected


def test_seed_everything_is_reproducible() -> None:
    seed_everything(2**40 + 5)  # beyond NumPy's 32-bit seed range
    a = _draw()
    seed_everything(2**40 + 5)
    assert _draw() == a
    seed_everything(6)
    assert _draw() != a
    with pytest.raises(ValueError):
        seed_everything(-1)


def test_unknown_version_is_rejected() -> None:
    tensors, meta = capture_rng_state()
    with pytest.raises(ValueError, match="unknown RNG state version"):
        restore_rng_state(tensors, {**meta, "version": 2})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_cuda_states_without_cuda_warn() -> None:
    tensors, meta = capture_rng_state()
    assert meta["cuda_devices"] == 0
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        restore_rng_state({**tensors, "cuda.0": torch.zeros(16, dtype=torch.uint8)},
                          {**meta, "cuda_devices": 1})
