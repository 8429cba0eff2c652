"""balanced_label_split: balanced, seeded, disjoint and complete."""

from __future__ import annotations

import pytest
import torch

from biva.data import balanced_label_split


def _labels():
    counts = [30, 12, 25, 10, 40]
    return torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])[
        torch.randperm(sum(counts), generator=torch.Generator().manual_seed(0))
    ]


def test_balanced_disjoint_complete():
    labels = _labels()
    lab, unlab = balanced_label_split(labels, 10, seed=0)
    assert lab.dtype == torch.int64 and unlab.dtype == torch.int64
    assert torch.bincount(labels[lab]).tolist() == [10] * 5
    assert set(lab.tolist()).isdisjoint(unlab.tolist())
    assert sorted(lab.tolist() + unlab.tolist()) == list(range(len(labels)))
    assert torch.equal(lab, torch.sort(lab).values)


def test_seeded():
    labels = _labels()
    a, _ = balanced_label_split(labels, 5, seed=1)
    b, _ = balanced_label_split(labels, 5, seed=1)
    c, _ = balanced_label_split(labels, 5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_class_too_small():
    with pytest.raises(ValueError, match="class 3: 10"):
        balanced_label_split(_labels(), 11, seed=0)
