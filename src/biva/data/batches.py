"""Deterministic, resumable epoch batching and conversion of batches to model inputs.

Everything random in an epoch is a pure function of (seed, epoch), drawn from local
``torch.Generator`` objects (the global RNG is never used):

* the permutation of the epoch: ``randperm(n)`` from generator (seed, "perm", epoch);
* dynamic binarization: the uniform noise for the example at *position* p of the permuted
  epoch is row ``p % 512`` of a (512, C, H, W) block drawn from generator
  (seed, "binarize", epoch, p // 512). The draw for an example therefore does not depend on
  batch size, ``start_batch``, rank or world size, so resumed and distributed runs see the
  same binary images as an uninterrupted single-process run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from biva.data.types import DatasetSplits, ImageSplit
from biva.utils.seeds import make_generator

_NOISE_BLOCK = 512


def _noise_block(
    sample_shape: tuple[int, ...], seed: int, keys: tuple[int | str, ...], k: int
) -> torch.Tensor:
    gen = make_generator(seed, *keys, k)
    return torch.rand((_NOISE_BLOCK, *sample_shape), generator=gen)


class _BlockNoise:
    """Uniform [0, 1) noise addressed by position, generated in fixed blocks of positions."""

    def __init__(self, sample_shape: tuple[int, ...], seed: int, *keys: int | str) -> None:
        self._shape = sample_shape
        self._seed = seed
        self._keys = keys
        self._cache: dict[int, torch.Tensor] = {}

    def block(self, k: int) -> torch.Tensor:
        """Noise of positions [512 k, 512 (k + 1)): float32 (512, *sample_shape)."""
        block = self._cache.get(k)
        if block is None:
            block = _noise_block(self._shape, self._seed, self._keys, k)
            self._cache[k] = block
        return block

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Noise rows for int64 ``positions`` (M,): float32 (M, *sample_shape)."""
        block_ids = torch.div(positions, _NOISE_BLOCK, rounding_mode="floor")
        out = torch.empty((positions.shape[0], *self._shape))
        used = torch.unique(block_ids).tolist()
        for k in used:
            mask = block_ids == k
            out[mask] = self.block(k)[positions[mask] % _NOISE_BLOCK]
        # Positions only move forward within an epoch: blocks behind this batch are done.
        for k in [k for k in self._cache if k < min(used, default=0)]:
            del self._cache[k]
        return out


def _require_intensities(images: torch.Tensor, what: str) -> None:
    if not images.is_floating_point():
        raise ValueError(
            f"{what} needs float intensities in [0, 1] (a dynamically binarized dataset), "
            f"got {images.dtype} images"
        )


def bernoulli_draw(images: torch.Tensor, seed: int, *keys: int | str,
                   first: int = 0) -> torch.Tensor:
    """A fixed Bernoulli draw of float intensities (N, C, H, W) in [0, 1] -> uint8 {0, 1}.

    Example i uses noise position ``first + i`` of stream (seed, *keys), independent of N:
    a long array drawn in pieces (``first``: the index of the piece's first example) gets the
    draw of one call.
    """
    _require_intensities(images, "bernoulli_draw")
    if first < 0:
        raise ValueError(f"bernoulli_draw: first must be >= 0, found {first}")
    out = torch.empty(images.shape, dtype=torch.uint8)
    i, n = 0, images.shape[0]
    while i < n:
        k, offset = divmod(first + i, _NOISE_BLOCK)
        take = min(_NOISE_BLOCK - offset, n - i)
        u = _noise_block(tuple(images.shape[1:]), seed, keys, k)[offset:offset + take]
        out[i:i + take] = u < images[i:i + take]
        i += take
    return out


def fixed_binarization(split: ImageSplit, seed: int, first: int = 0) -> ImageSplit:
    """One seeded Bernoulli draw of a dynamic split (float32 [0,1] -> uint8 {0,1}).

    Evaluating a dynamically binarized dataset uses such a fixed draw, so that every
    evaluation (and every model) sees the same binary test images; raw grey images (arrays,
    folders) are drawn the same way. ``first``: the index of the split's first image in a
    longer one read in pieces.
    """
    return ImageSplit(bernoulli_draw(split.images, seed, "fixed", first=first), split.labels)


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches per rank in one epoch of ``n`` examples (the same on every rank)."""
    if batch_size < 1 or world_size < 1 or n < 0:
        raise ValueError(
            f"need n >= 0, batch_size >= 1, world_size >= 1; got {n}, {batch_size}, {world_size}"
        )
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def epoch_order(n: int, *, epoch: int, seed: int, shuffle: bool = True) -> torch.Tensor:
    """The order in which one epoch visits examples: int64 (n,) permutation of range(n)."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=make_generator(seed, "perm", epoch))


def epoch_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    dynamic_binarize: bool = False,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (images, labels) batches of one epoch, from batch ``start_batch`` on.

    Images keep the split's dtype, except with ``dynamic_binarize`` (float intensities ->
    uint8 {0,1}, fresh per epoch). Rank r of ``world_size`` takes positions r, r + W, ... of
    the shared permutation; with ``drop_last=False`` the permutation is padded by wrapping
    around (like DistributedSampler) so every rank has the same number of batches.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start_batch < 0 or epoch < 0:
        raise ValueError(f"start_batch and epoch must be >= 0, got {start_batch}, {epoch}")
    if dynamic_binarize:
        _require_intensities(split.images, "dynamic_binarize")
    n = len(split)
    count = num_batches(n, batch_size, drop_last, world_size)
    if count == 0 or start_batch >= count:
        return
    order = epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle)
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    total = per_rank * world_size
    if total > n:
        order = order.repeat(math.ceil(total / n))[:total]
    positions = torch.arange(rank, total, world_size)
    noise = (
        _BlockNoise(tuple(split.images.shape[1:]), seed, "binarize", epoch)
        if dynamic_binarize
        else None
    )
    for b in range(start_batch, count):
        pos = positions[b * batch_size : (b + 1) * batch_size]
        idx = order[pos]
        images = split.images[idx]
        if noise is not None:
            images = (noise.rows(pos) < images).to(torch.uint8)
        labels = None if split.labels is None else split.labels[idx]
        yield images, labels


def to_model_input(images: torch.Tensor, kind: str, bits: int = 8) -> torch.Tensor:
    """Convert a batch (B, C, H, W) to the float32 the likelihoods expect.

    "binary": values {0, 1} (uint8, bool or float) -> float32 {0, 1}; float intensities are
    rejected (no sampling here: use ``dynamic_binarize`` or ``fixed_binarization``).
    "8bit": uint8 -> float32 in [-1, 1] as x / 127.5 - 1; with ``bits < 8`` x is first
    quantised to level l = x >> (8 - bits) and mapped to 2 l / (2**bits - 1) - 1.
    """
    if kind == "binary":
        out = images.to(torch.float32)
        # Float intensities are the real hazard; integer batches on an accelerator are not
        # checked, since reading the result back would stall the device every batch.
        check = images.is_floating_point() or (
            images.dtype != torch.bool and images.device.type == "cpu"
        )
        if check and bool(((out != 0) & (out != 1)).any()):
            raise ValueError(
                "binary data must hold only 0 and 1; got other values (float intensities of a "
                "dynamic dataset must be binarized first: epoch_batches(dynamic_binarize=True) "
                "for training, fixed_binarization() for evaluation)"
            )
        return out
    if kind == "8bit":
        if images.dtype != torch.uint8:
            raise ValueError(f"8-bit data must be uint8 0..255, got {images.dtype}")
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if bits == 8:
            return images.to(torch.float32) / 127.5 - 1.0
        levels = (images >> (8 - bits)).to(torch.float32)
        return levels * (2.0 / (2**bits - 1)) - 1.0
    raise ValueError(f"kind must be 'binary' or '8bit', got {kind!r}")


def evaluation_split(data: DatasetSplits, which: str, seed: int = 0) -> ImageSplit:
    """The split ``which`` ("train"/"valid"/"test") ready for evaluation.

    Dynamically binarized data get one fixed, seeded Bernoulli draw, so every evaluation and
    every model sees the same binary images.
    """
    split = getattr(data, which)
    if data.binarization == "dynamic":
        split = fixed_binarization(split, seed)
    return split
