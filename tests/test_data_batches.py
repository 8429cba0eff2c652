"""Epoch batching: determinism, exact resume, dynamic binarization, ranks; model inputs."""

from __future__ import annotations

import pytest
import torch

from biva.data import (
    ImageSplit,
    epoch_batches,
    fixed_binarization,
    num_batches,
    to_model_input,
)


def _split(n=103, float_images=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if float_images:
        images = torch.rand((n, 1, 4, 4), generator=gen)
    else:
        images = torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n))  # labels = example ids


def _collect(split, batch_size, **kw):
    return [(x.clone(), None if y is None else y.clone())
            for x, y in epoch_batches(split, batch_size, **kw)]


def test_deterministic_given_seed_and_epoch():
    split = _split()
    a = _collect(split, 10, epoch=3, seed=7)
    b = _collect(split, 10, epoch=3, seed=7)
    assert len(a) == num_batches(103, 10, True) == 10
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    c = _collect(split, 10, epoch=4, seed=7)
    d = _collect(split, 10, epoch=3, seed=8)
    ids = torch.cat([y for _, y in a])
    assert not torch.equal(ids, torch.cat([y for _, y in c]))
    assert not torch.equal(ids, torch.cat([y for _, y in d]))
    assert len(set(ids.tolist())) == 100  # a permutation without repeats
    # Images travel with their labels.
    for x, y in a:
        assert torch.equal(x, split.images[y])


def test_global_rng_untouched():
    state = torch.get_rng_state()
    list(epoch_batches(_split(float_images=True), 8, epoch=0, seed=0, dynamic_binarize=True))
    fixed_binarization(_split(float_images=True), seed=1)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("dynamic", [False, True])
def test_resume_from_start_batch(dynamic):
    split = _split(float_images=dynamic)
    full = _collect(split, 8, epoch=2, seed=1, dynamic_binarize=dynamic)
    for k in (0, 1, 5, len(full) - 1, len(full)):
        resumed = _collect(split, 8, epoch=2, seed=1, dynamic_binarize=dynamic, start_batch=k)
        assert len(resumed) == len(full) - k
        for (x1, y1), (x2, y2) in zip(full[k:], resumed, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_no_shuffle_and_last_partial_batch():
    split = _split(n=10)
    batches = _collect(split, 4, epoch=0, seed=0, shuffle=False, drop_last=False)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert num_batches(10, 4, drop_last=False) == 3 and num_batches(10, 4, drop_last=True) == 2


def test_dynamic_binarization():
    split = ImageSplit(torch.full((400, 1, 5, 5), 0.3), torch.arange(400))
    e0 = _collect(split, 50, epoch=0, seed=0, dynamic_binarize=True)
    e1 = _collect(split, 50, epoch=1, seed=0, dynamic_binarize=True)
    x0 = torch.cat([x for x, _ in e0])
    x1 = torch.cat([x for x, _ in e1])
    assert x0.dtype == torch.uint8 and set(x0.unique().tolist()) == {0, 1}
    assert abs(x0.float().mean().item() - 0.3) < 0.02
    # Compare the same examples in both epochs: a fresh draw each epoch.
    by_id0 = x0[torch.argsort(torch.cat([y for _, y in e0]))]
    by_id1 = x1[torch.argsort(torch.cat([y for _, y in e1]))]
    assert (by_id0 != by_id1).float().mean() > 0.3
    # Probabilities 0 and 1 are honoured exactly.
    edge = ImageSplit(torch.tensor([0.0, 1.0]).repeat(8).reshape(8, 1, 1, 2))
    (x, _), = epoch_batches(edge, 8, epoch=0, seed=0, dynamic_binarize=True)
    assert torch.equal(x[:, 0, 0], torch.tensor([[0, 1]] * 8, dtype=torch.uint8))


def test_dynamic_draw_independent_of_batch_size_and_world_size():
    split = _split(n=1200, float_images=True)  # spans several noise blocks

    def draws(batch_size, world_size=1):
        out = {}
        for rank in range(world_size):
            for x, y in epoch_batches(split, batch_size, epoch=5, seed=3, drop_last=False,
                                      dynamic_binarize=True, rank=rank, world_size=world_size):
                for xi, yi in zip(x, y, strict=True):
                    out.setdefault(int(yi), xi)
        return out

    reference = draws(7)
    assert len(reference) == 1200
    for other in (draws(64), draws(1000), draws(16, world_size=3)):
        assert other.keys() == reference.keys()
        assert all(torch.equal(reference[k], other[k]) for k in reference)


def test_dynamic_binarize_needs_intensities():
    with pytest.raises(ValueError, match="float intensities"):
        next(epoch_batches(_split(), 4, epoch=0, seed=0, dynamic_binarize=True))


@pytest.mark.parametrize("n,world_size,batch_size", [(103, 4, 5), (100, 3, 7), (9, 2, 4)])
def test_ranks_partition_epoch(n, world_size, batch_size):
    split = _split(n=n)
    per_rank = [
        torch.cat([y for _, y in epoch_batches(split, batch_size, epoch=1, seed=2, rank=r,
                                                 world_size=world_size)])
        for r in range(world_size)
    ]
    counts = {len(list(epoch_batches(split, batch_size, epoch=1, seed=2, rank=r,
                                     world_size=world_size))) for r in range(world_size)}
    assert counts == {num_batches(n, batch_size, True, world_size)}
    ids = torch.cat(per_rank).tolist()
    assert len(ids) == len(set(ids))  # disjoint
    assert len(ids) == world_size * (n // world_size // batch_size) * batch_size
    # Without drop_last every example is seen and all ranks still get equal batch counts.
    seen = set()
    lens = set()
    for r in range(world_size):
        batches = list(epoch_batches(split, batch_size, epoch=1, seed=2, drop_last=False, rank=r,
                                     world_size=world_size))
        lens.add(len(batches))
        seen.update(torch.cat([y for _, y in batches]).tolist())
    assert seen == set(range(n)) and lens == {num_batches(n, batch_size, False, world_size)}


def test_rank_validation():
    with pytest.raises(ValueError, match="rank"):
        next(epoch_batches(_split(), 4, epoch=0, seed=0, rank=2, world_size=2))


def test_to_model_input_8bit():
    x = torch.tensor([0, 1, 8, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 6)
    out = to_model_input(x, "8bit")
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), x.flatten().float() / 127.5 - 1)
    assert out.min() == -1 and out.max() == 1
    five = to_model_input(x, "8bit", bits=5).flatten()
    levels = torch.tensor([0, 0, 1, 15, 16, 31]).float()
    assert torch.allclose(five, 2 * levels / 31 - 1)
    assert to_model_input(x, "8bit", bits=1).flatten().tolist() == [-1, -1, -1, -1, 1, 1]
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(x.float(), "8bit")


def test_to_model_input_binary():
    x = torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8).reshape(1, 1, 2, 2)
    out = to_model_input(x, "binary")
    assert out.dtype == torch.float32 and torch.equal(out, x.float())
    with pytest.raises(ValueError, match="fixed_binarization"):
        to_model_input(torch.full((1, 1, 2, 2), 0.5), "binary")


def test_fixed_binarization():
    split = _split(n=700, float_images=True)
    a = fixed_binarization(split, seed=0)
    assert a.images.dtype == torch.uint8 and set(a.images.unique().tolist()) == {0, 1}
    assert torch.equal(a.labels, split.labels)
    assert torch.equal(a.images, fixed_binarization(split, seed=0).images)
    assert not torch.equal(a.images, fixed_binarization(split, seed=1).images)
    # Example i's draw does not depend on how many examples follow it.
    head = fixed_binarization(split.subset(torch.arange(600)), seed=0)
    assert torch.equal(head.images, a.images[:600])
    assert abs(a.images.float().mean() - split.images.mean()) < 0.01
