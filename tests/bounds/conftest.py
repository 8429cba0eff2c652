"""Fixtures of the brute-force bound tests: the trained tiny models (on demand, one per
variant), four test images, and their brute-force marginals, computed once per module."""

from __future__ import annotations

import pytest
import torch
from brute_force import TrainedOnDemand, brute_force_log_px, toy_data


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> TrainedOnDemand:
    """One trained tiny model per variant."""
    return TrainedOnDemand()


@pytest.fixture(scope="module")
def images():
    """4 distinct test images: the 4 prototypes with one different pixel flipped each."""
    x = toy_data(64, seed=7)
    uniq = torch.unique(x.flatten(1), dim=0)[:4]
    assert len(uniq) == 4
    return uniq.view(4, 1, 4, 4)


@pytest.fixture(scope="module")
def exact_log_px(trained, images):
    """variant -> brute-force (log p(images), s.e.) of ``trained[variant]``, computed once: the
    seeded ancestral draws give the same value at every call, and they are the slow part."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        if variant not in cache:
            cache[variant] = brute_force_log_px(trained[variant], images)
        return cache[variant]
    return get
