"""Local random generators derived from a seed and a tuple of keys.

Every random choice of the data layer (splits, static draws, epoch permutations, dynamic
binarization) uses its own ``torch.Generator`` seeded from (seed, keys): the global RNG is never
touched, and distinct keys give statistically independent streams.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key_to_int(key: int | str) -> int:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"seed keys must be int or str, got {type(key).__name__}")
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    if key < 0:
        raise ValueError(f"seed keys must be non-negative, got {key}")
    return key


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 64-bit seed that is a pure function of (seed, *keys)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    # SeedSequence mixes the words well, so (seed, epoch) and (seed, epoch + 1) are unrelated.
    words = [seed, len(keys), *(_key_to_int(k) for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def make_generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``derive_seed(seed, *keys)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
