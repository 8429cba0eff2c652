"""A folder of a user's images (or one image file) read as the input a model scores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from biva.config import DataKind, RunConfig
from biva.data.batches import fixed_binarization
from biva.data.formats import IMAGE_EXTENSIONS, is_image_file, read_images
from biva.data.types import ImageSplit


def fit_to_shape(split: ImageSplit, shape: tuple[int, int, int]) -> ImageSplit:
    """8-bit images (N, C, H, W) brought to ``shape`` (C', H', W'): grey -> colour by repeating
    the channel, colour -> grey by the ITU-R 601 luma, then an area-averaging resize (padding
    never: the digit keeps its frame). For scoring, e.g., MNIST digits with a model of 32x32
    colour photos."""
    x = split.images
    if x.dtype != torch.uint8:
        raise ValueError(f"fit_to_shape: expected uint8 8-bit images, found {x.dtype}")
    c, h, w = shape
    xf = x.float()
    if xf.shape[1] == 1 and c == 3:
        xf = xf.expand(-1, 3, -1, -1)
    elif xf.shape[1] == 3 and c == 1:
        xf = (xf * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif xf.shape[1] != c:
        raise ValueError(f"fit_to_shape: cannot map {xf.shape[1]} channels to {c}")
    if tuple(xf.shape[2:]) != (h, w):
        xf = torch.nn.functional.interpolate(xf, size=(h, w), mode="bilinear", antialias=True,
                                             align_corners=False)
    return ImageSplit(xf.round().clamp(0, 255).to(torch.uint8).contiguous(), split.labels)


def image_files(path: str | Path) -> list[Path]:
    """The image files :func:`read_folder` reads, in its order: ``path`` itself if it is a
    file, else every visible regular image file below it (recursively, hidden files and
    folders skipped, names checked as :func:`~biva.data.formats.list_images` checks them),
    sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    if path.is_file():
        files = [path]
    else:
        files = []

        def unreadable(err: OSError) -> None:
            # Skipped, but never silently: the user learns which images were left out.
            print(f"warning: {err.filename}: unreadable ({err.strerror}); its images are "
                  "skipped", file=sys.stderr)

        for root, dirs, names in os.walk(path, onerror=unreadable):
            # Hidden folders and files (.git, macOS ._ copies) are skipped, as training skips them.
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(root) / n for n in names if is_image_file(Path(root) / n)]
        files.sort()
    if not files:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files



def iter_folder(path: str | Path, config: RunConfig, *, seed: int = 0,
                batch: int | None = 512):
    """:func:`read_folder` a batch of files at a time: yields (files, uint8 images (n, C, H,
    W)), so that memory stays flat in the number of images (``batch`` None: one batch of
    all). Grey levels for a binary-image model get the draw of
    :func:`~biva.data.batches.fixed_binarization` (image i as image i of a split), whatever
    the batch; bilevel files (values 0 and 1) are recognised per batch."""
    files = image_files(path)
    batch = batch or len(files)
    shape = tuple(config.model.input_shape)
    binary = DataKind.for_likelihood(config.model.likelihood) is DataKind.BINARY
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        raw = torch.from_numpy(read_images(chunk, size=shape[-1]))
        if binary and int(raw.max()) <= 1:
            raw = raw * 255                                # bilevel files: 0/1 -> 0/255
        images = fit_to_shape(ImageSplit(raw.to(torch.uint8)), shape).images
        if binary:
            images = fixed_binarization(ImageSplit(images.float() / 255), seed, start).images
        yield chunk, images


def read_folder(path: str | Path, config: RunConfig, *, seed: int = 0) -> torch.Tensor:
    """The images of a folder (or one image file) as the input a model of ``config`` scores:
    uint8 (N, C, H, W) at its channels and size (square crop and resize, grey <-> colour); for a
    binary-image model (Bernoulli likelihood) drawn to {0, 1} with a fixed ``seed``, as the
    binarized test sets are. Files are taken in sorted order, recursively (:func:`image_files`)."""
    return torch.cat([images for _, images in iter_folder(path, config, seed=seed,
                                                          batch=None)])
