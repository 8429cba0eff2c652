"""Image grids as PNG files (no torchvision needed)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from biva.utils.atomic import atomic_write_bytes


def to_display(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Model-space images (B, C, H, W) -> floats in [0, 1] ("binary": as is; "8bit": [-1,1])."""
    x = x.detach().float().cpu()
    return x.clamp(0, 1) if kind == "binary" else (x.clamp(-1, 1) + 1) / 2


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1,
              scale: int = 1) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> uint8 grid (rows*H', cols*W', C) with ``pad`` pixel borders."""
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol_rows = math.ceil(b / nrow)
    grid = np.ones((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x0:x0 + w] = arr[i]
    out = (grid * 255).round().clip(0, 255).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def save_grid(images: torch.Tensor, path: str | Path, *, kind: str = "binary",
              nrow: int | None = None, scale: int | None = None) -> Path:
    """Write model-space images (B, C, H, W) as one PNG grid; returns the path.

    Small images are upscaled (nearest) so that a grid is at least ~512 pixels wide.
    """
    disp = to_display(images, kind)
    if scale is None:
        scale = max(1, 512 // (disp.shape[-1] * (nrow or math.ceil(math.sqrt(len(disp))))))
    grid = make_grid(disp, nrow=nrow, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())  # a full disk leaves the earlier file whole
    return path
