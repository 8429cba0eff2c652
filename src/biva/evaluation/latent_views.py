"""What each layer of a hierarchy holds, as figures: reconstructions that keep only the top
layers of an image's code, and interpolations at one layer (built on the latent API of
:class:`biva.models.LatentHierarchy`).

Images are in model-input space; every function runs in eval mode without autograd, and a
``seed`` fixes the draws from q and p without touching the caller's RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from biva.models import LatentHierarchy
from biva.utils.atomic import atomic_write_json
from biva.utils.images import save_grid
from biva.utils.rng import seeded_eval


def keep_columns(model: LatentHierarchy, x: Tensor, keeps: Sequence[int], *,
                 temperature: float = 1.0, seed: int = 0) -> Tensor:
    """For x (B, C, H, W): column j is ``reconstruct(x, keep=keeps[j])`` (the top keeps[j]
    layers from q(z|x), the rest from the conditional prior at ``temperature``), the same
    prior noise in every column. Returns (B, len(keeps), C, H, W)."""
    cols = []
    for keep in keeps:
        with seeded_eval(model, seed):
            gen = torch.Generator(device=x.device).manual_seed(seed)
            cols.append(model.reconstruct(x, int(keep), temperature=temperature,
                                          generator=gen).images)
    return torch.stack(cols, 1)


def save_keep_grid(model: LatentHierarchy, x: Tensor, path: str | Path, kind: str,
                   keeps: Sequence[int], *, temperature: float = 1.0, seed: int = 0) -> Path:
    """PNG: per image a row: the image, then ``keep_columns`` for ``keeps``."""
    cols = keep_columns(model, x, keeps, temperature=temperature, seed=seed)
    rows = torch.cat([x.unsqueeze(1).to(cols), cols], 1)
    return save_grid(rows.flatten(0, 1), path, kind=kind, nrow=rows.shape[1])


def save_layer_interpolation(model: LatentHierarchy, x_a: Tensor, x_b: Tensor, layer: int,
                             path: str | Path, kind: str, *, steps: int = 8,
                             others: str = "a", seed: int = 0) -> Path:
    """PNG: per pair a row: x_a, the ``steps`` decoded points of the line between the layer's
    posterior means (the other layers from x_a, or from the prior means), x_b."""
    with seeded_eval(model, seed):
        inter = model.interpolate(x_a, x_b, layer, steps, others=others).images
    rows = torch.cat([x_a.unsqueeze(1).to(inter), inter, x_b.unsqueeze(1).to(inter)], 1)
    return save_grid(rows.flatten(0, 1), path, kind=kind, nrow=rows.shape[1])


def write_latent_views(model: LatentHierarchy, x: Tensor, kind: str, out: Path, *,
                       keeps: Sequence[int] | None = None, layers: Sequence[int] | None = None,
                       steps: int = 8, others: str = "a", temperature: float = 1.0,
                       seed: int = 0, sources: Sequence[str] | None = None) -> list[Path]:
    """Write into the folder ``out``: ``keep.png`` (rows: x, then keep = ``keeps``, default
    L, L-1, ..., 0), ``interpolate_layer{i}.png`` for each i of ``layers`` (default 1 and L;
    pairs x[0]-x[1], x[2]-x[3], ...; needs two images; the other layers as ``others`` says,
    see :meth:`~biva.models.LatentHierarchy.interpolate`) and ``latent_views.json`` (what was
    drawn, from which images). Returns the files written."""
    L = model.n_layers
    keeps = list(range(L, -1, -1)) if keeps is None else [int(k) for k in keeps]
    layers = sorted({1, L}) if layers is None else [int(i) for i in layers]
    for k in keeps:
        if not 0 <= k <= L:
            raise ValueError(f"--keep: expected values in 0..{L} (top layers kept), found {k}")
    for i in layers:
        if not 1 <= i <= L:
            raise ValueError(f"--interpolate-layers: expected values in 1..{L}, found {i}")
    if layers and x.shape[0] < 2:
        raise ValueError(f"interpolations need two images or more, found {x.shape[0]}")
    out.mkdir(parents=True, exist_ok=True)
    written = [save_keep_grid(model, x, out / "keep.png", kind, keeps,
                              temperature=temperature, seed=seed)]
    pairs = x.shape[0] // 2
    for i in layers:
        written.append(save_layer_interpolation(
            model, x[0:2 * pairs:2], x[1:2 * pairs:2], i, out / f"interpolate_layer{i}.png",
            kind, steps=steps, others=others, seed=seed))
    record = {"layers": L, "group_names": list(model.group_names), "keep": keeps,
              "interpolate_layers": layers, "steps": steps, "others": others,
              "temperature": temperature, "seed": seed,
              "images": list(sources) if sources is not None else x.shape[0],
              "files": [p.name for p in written]}
    atomic_write_json(out / "latent_views.json", record)
    return [*written, out / "latent_views.json"]

