"""Out-of-distribution sets that need no download, made from the in-distribution images.

Each takes a split ready for evaluation (binary images already drawn: uint8 {0, 1}; 8-bit
images: uint8 0..255) and returns a split of the same size and shape:

* ``uniform``: independent uniform pixels (fair coin flips for binary images);
* ``mean_noise``: independent pixels with the data's statistics: Bernoulli with the data's mean
  for binary images, per-channel Gaussian with the data's mean and std for 8-bit ones;
* ``constant``: each image one value (half black, half white for binary images; a random
  colour for 8-bit ones);
* ``hflip`` / ``vflip``: the images mirrored left-right / upside down;
* ``invert``: 1 - x (binary) or 255 - x (8-bit);
* ``jigsaw``: each image cut into a 4 x 4 grid of tiles put back in a random order: the
  low-level statistics (pixels, edges, textures) of the data, its global structure destroyed
  (a semantic shift without a download; the side must divide by 4).
"""

from __future__ import annotations

import torch

from biva.data import DatasetSplits, ImageSplit, load_dataset

SYNTHETIC = ("uniform", "mean_noise", "constant", "hflip", "vflip", "invert", "jigsaw")
JIGSAW_GRID = 4


def synthetic_set(name: str, reference: ImageSplit, kind: str, seed: int = 0) -> ImageSplit:
    """The synthetic OOD set ``name`` (see the module doc) built from ``reference`` (N, C, H, W)
    uint8 images of ``kind`` "binary" or "8bit"; seeded, labels dropped."""
    x = reference.images
    if x.dtype != torch.uint8:
        raise ValueError(f"synthetic_set: expected uint8 images ready for evaluation (binary "
                         f"data drawn), found {x.dtype}")
    if kind not in ("binary", "8bit"):
        raise ValueError(f"synthetic_set: kind must be 'binary' or '8bit', found {kind!r}")
    binary = kind == "binary"
    top = 1 if binary else 255
    g = torch.Generator().manual_seed(seed)
    n, c = x.shape[0], x.shape[1]
    if name == "uniform":
        out = torch.randint(0, top + 1, x.shape, generator=g, dtype=torch.uint8)
    elif name == "mean_noise":
        xf = x.float()
        if binary:
            out = (torch.rand(x.shape, generator=g) < xf.mean()).to(torch.uint8)
        else:
            mean = xf.mean((0, 2, 3), keepdim=True)
            std = xf.std((0, 2, 3), keepdim=True)
            out = (mean + std * torch.randn(x.shape, generator=g)).round().clamp(0, 255)
            out = out.to(torch.uint8)
    elif name == "constant":
        if binary:
            value = (torch.arange(n) % 2).view(n, 1, 1, 1).expand(n, c, 1, 1)
        else:
            value = torch.randint(0, 256, (n, c, 1, 1), generator=g)
        out = value.expand_as(x).to(torch.uint8).contiguous()
    elif name == "hflip":
        out = x.flip(-1).contiguous()
    elif name == "vflip":
        out = x.flip(-2).contiguous()
    elif name == "invert":
        out = (top - x).to(torch.uint8)
    elif name == "jigsaw":
        out = _jigsaw(x, g)
    else:
        raise ValueError(f"unknown synthetic OOD set {name!r}; known: {', '.join(SYNTHETIC)}")
    return ImageSplit(out)


def _jigsaw(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) -> the same images with their 4 x 4 tiles in a random order each."""
    n, c, h, w = x.shape
    t = JIGSAW_GRID
    if h % t or w % t:
        raise ValueError(f"jigsaw: the image side ({h}x{w}) must divide by {t}")
    th, tw = h // t, w // t
    tiles = x.reshape(n, c, t, th, t, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, t * t, c, th, tw)
    order = torch.stack([torch.randperm(t * t, generator=g) for _ in range(n)])
    tiles = tiles[torch.arange(n)[:, None], order]
    return (tiles.reshape(n, t, t, c, th, tw).permute(0, 3, 1, 4, 2, 5)
            .reshape(n, c, h, w).contiguous())


def load_like_run(name: str, path: str | None, data: DatasetSplits, *, root: str | None,
                  seed: int) -> DatasetSplits:
    """Load dataset ``name`` with a run's preprocessing (``data``: the run's own dataset):
    binary runs use the same binarization mode (already-binary files are used as they are),
    8-bit runs stay 8-bit. A ValueError says when the two kinds of image cannot meet."""
    mode = data.binarization if data.kind == "binary" else None
    try:
        other = load_dataset(name, root, binarization=mode, seed=seed, path=path)
    except ValueError as err:
        if data.kind != "binary" or "binarization=" not in str(err):
            raise
        other = load_dataset(name, root, binarization=None, seed=seed, path=path)
    if other.kind != data.kind:
        raise ValueError(f"{name}: loads as {other.kind!r} images but the model was trained "
                         f"on {data.kind!r} images ({data.name}); they cannot be scored by one "
                         "likelihood")
    return other
