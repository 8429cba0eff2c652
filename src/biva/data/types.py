"""Containers for loaded datasets: image tensors plus labels, split three ways."""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("binary", "8bit")
BINARIZATIONS = ("static", "dynamic")


@dataclass
class ImageSplit:
    """One split of a dataset.

    ``images`` is (N, C, H, W): uint8 0..255 for 8-bit data, uint8 {0, 1} for binary data, or
    float32 in [0, 1] for grey-level intensities that are binarized dynamically at batch time.
    ``labels`` is int64 (N,) or None. ``sources`` names where each example came from (a file
    path relative to the dataset folder, or ``name.npz[row]``) when the loader knows it.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(
                f"ImageSplit.images must be (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"ImageSplit.images must be uint8 or float32, got {self.images.dtype}")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
                raise ValueError(
                    "ImageSplit.labels must be int64 of shape (N,), got "
                    f"{self.labels.dtype} {tuple(self.labels.shape)}"
                )
            if self.labels.shape[0] != self.images.shape[0]:
                raise ValueError(
                    f"ImageSplit has {self.images.shape[0]} images but "
                    f"{self.labels.shape[0]} labels"
                )
        if self.sources is not None and len(self.sources) != self.images.shape[0]:
            raise ValueError(f"ImageSplit has {self.images.shape[0]} images but "
                             f"{len(self.sources)} source names")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageSplit:
        """The examples at ``indices`` (int64 (M,)), in that order."""
        labels = None if self.labels is None else self.labels[indices]
        sources = None if self.sources is None else tuple(self.sources[i] for i in indices.tolist())
        return ImageSplit(self.images[indices], labels, sources)


@dataclass
class DatasetSplits:
    """A dataset as train / valid / test splits plus the facts a model needs about it.

    ``valid`` is carved from the training data (never from the test set) unless the dataset
    ships its own validation split. ``kind`` selects the likelihood: "binary" (Bernoulli) or
    "8bit" (discretized logistic). ``binarization`` is "static" (a fixed binary draw),
    "dynamic" (float intensities, a fresh draw every epoch) or None (8-bit data).
    """

    name: str
    train: ImageSplit
    valid: ImageSplit
    test: ImageSplit
    kind: str
    binarization: str | None
    num_classes: int | None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DatasetSplits.kind must be one of {KINDS}, got {self.kind!r}")
        if self.binarization is not None and self.binarization not in BINARIZATIONS:
            raise ValueError(
                f"DatasetSplits.binarization must be one of {BINARIZATIONS} or None, "
                f"got {self.binarization!r}"
            )
        shapes = {tuple(s.images.shape[1:]) for s in (self.train, self.valid, self.test)}
        if len(shapes) != 1:
            raise ValueError(f"splits of {self.name!r} disagree on image shape: {sorted(shapes)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-example image shape (C, H, W)."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)
