"""Labelled / unlabelled partitions for semi-supervised learning."""

from __future__ import annotations

import torch

from biva.utils.seeds import make_generator


def balanced_label_split(
    labels: torch.Tensor, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``per_class`` examples of every class to keep labelled.

    ``labels`` is int (N,). Returns (labelled, unlabelled) sorted int64 index tensors: disjoint,
    together covering range(N); the choice is a pure function of (labels, per_class, seed).
    Raises ValueError if some class has fewer than ``per_class`` examples.
    """
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor (N,), got {labels.dtype} {tuple(labels.shape)}"
        )
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    short = [(int(c), int(k)) for c, k in zip(classes, counts, strict=True) if k < per_class]
    if short:
        found = ", ".join(f"class {c}: {k}" for c, k in short)
        raise ValueError(f"need {per_class} labelled examples per class, found only {found}")
    chosen = []
    for c in classes.tolist():
        members = torch.nonzero(labels == c).flatten()
        # One generator per class: the pick for a class does not depend on the other classes.
        perm = torch.randperm(members.numel(), generator=make_generator(seed, "labels", str(c)))
        chosen.append(members[perm[:per_class]])
    labelled = torch.sort(torch.cat(chosen)).values if chosen else torch.empty(0, dtype=torch.long)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[labelled] = False
    unlabelled = torch.nonzero(mask).flatten()
    return labelled.to(torch.int64), unlabelled.to(torch.int64)
