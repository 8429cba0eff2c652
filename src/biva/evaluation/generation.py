"""What the hierarchy learned, as images: samples, partial generations, reconstructions and
interpolations in the top latent (the paper's Fig. 3, 10-13).

Every function returns images in model-input space (``binary``: [0, 1]; ``8bit``: [-1, 1]) and
runs in eval mode without autograd. A ``seed`` makes the draws from q and p reproducible
without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from biva.data import to_model_input
from biva.models import HierarchicalVAE
from biva.utils.images import save_grid
from biva.utils.rng import seeded_eval

Temperature = float | Sequence[float]


def _generator(model: HierarchicalVAE, seed: int) -> torch.Generator:
    return torch.Generator(device=model.out_conv.v.device).manual_seed(seed)


def samples_at_temperatures(model: HierarchicalVAE, n: int, temperatures: Sequence[Temperature],
                            *, seed: int = 0, mode: str = "mean") -> Tensor:
    """n prior samples per temperature with the same noise: (T, n, C, H, W).

    A temperature is one float (all layers) or L floats (layer 1 first); the generator is
    re-seeded for each, so row t and row t' differ only in the scale of the latent noise.
    """
    rows = [model.sample(n, t, generator=_generator(model, seed), mode=mode)
            for t in temperatures]
    return torch.stack(rows)


def reconstructions(model: HierarchicalVAE, x: Tensor, *, seed: int | None = None) -> Tensor:
    """Mean of p(x|z) with z ~ q(z|x) for x (B, C, H, W): (B, C, H, W)."""
    return partial_generations(model, x, [0], seed=seed)[:, 0]


def partial_generations(model: HierarchicalVAE, x: Tensor, layers: Sequence[int], *,
                        seed: int | None = None) -> Tensor:
    """Keep z_{>i} ~ q(.|x), draw z_{<=i} from the conditional prior, for each i (Fig. 12).

    x: (B, C, H, W); layers: values of i in 0..L-1 (0 is the reconstruction). Returns the means
    of p(x|z), (B, len(layers), C, H, W); column j uses i = layers[j].
    """
    cols = []
    with seeded_eval(model, seed):
        for i in layers:
            cols.append(model.to_images(model(x, prior_layers=int(i)).x_params, "mean"))
    return torch.stack(cols, 1)


def top_posterior_mean(model: HierarchicalVAE, x: Tensor, *, seed: int | None = None) -> Tensor:
    """Mean of q(z_L | x) for x (B, C, H, W): (B, *latent_shape(L)).

    For BIVA and the VAE, q(z_L | .) conditions on sampled z^BU_{<L}, so this is the mean given
    one (seeded) draw of those; for the LVAEs it is deterministic.
    """
    with seeded_eval(model, seed):
        return model(x).posteriors[f"z{model.n_layers}"].mu


def interpolate_top(model: HierarchicalVAE, x_a: Tensor, x_b: Tensor, steps: int = 8,
                    temperature: Temperature = 0.0, *, seed: int | None = 0) -> Tensor:
    """Decode a straight line between the q(z_L|x) means of x_a and x_b (each (B, C, H, W)).

    z_{<L} come from the conditional priors at ``temperature`` (0: their means; the same noise
    at every step). Returns (B, steps, C, H, W); columns 0 and steps-1 decode the endpoints.
    """
    if steps < 2:
        raise ValueError(f"steps: expected at least 2, found {steps}")
    mu_a = top_posterior_mean(model, x_a, seed=seed)
    mu_b = top_posterior_mean(model, x_b, seed=seed)
    weights = torch.linspace(0, 1, steps, device=mu_a.device, dtype=mu_a.dtype)
    cols = []
    for w in weights:
        z_top = torch.lerp(mu_a, mu_b, w)
        gen = _generator(model, 0 if seed is None else seed)
        cols.append(model.to_images(model.generate_from_top(z_top, temperature, gen), "mean"))
    return torch.stack(cols, 1)


# ------------------------------------------------------------------------------- grid writers
def _rows(images: Tensor) -> tuple[Tensor, int]:
    # (R, K, C, H, W) -> (R*K, C, H, W) for save_grid, with K images per row.
    return images.flatten(0, 1), images.shape[1]


def save_sample_grid(model: HierarchicalVAE, path: str | Path, kind: str, *, n: int = 12,
                     temperatures: Sequence[Temperature] = (1.0, 0.85, 0.7, 0.5),
                     seed: int = 0) -> Path:
    """PNG: one row of n samples per temperature, the same noise in every row."""
    images, nrow = _rows(samples_at_temperatures(model, n, temperatures, seed=seed))
    return save_grid(images, path, kind=kind, nrow=nrow)


def save_partial_generation_grid(model: HierarchicalVAE, x: Tensor, path: str | Path, kind: str,
                                 layers: Sequence[int] | None = None, *, seed: int = 0) -> Path:
    """PNG (Fig. 12): per image x[b] a row: x, its reconstruction, then i = layers (default 1..L-1).

    Column 1 is i = 0; column j > 1 keeps z_{>i} from q and draws z_{<=i} from the prior.
    """
    layers = list(range(1, model.n_layers)) if layers is None else list(layers)
    gens = partial_generations(model, x, [0, *layers], seed=seed)
    images, nrow = _rows(torch.cat([x.unsqueeze(1).to(gens), gens], 1))
    return save_grid(images, path, kind=kind, nrow=nrow)


def save_reconstruction_grid(model: HierarchicalVAE, x: Tensor, path: str | Path, kind: str, *,
                             per_row: int = 16, seed: int = 0) -> Path:
    """PNG: alternating rows of originals and their reconstructions, ``per_row`` per row."""
    recon = reconstructions(model, x, seed=seed)
    rows = []
    for start in range(0, x.shape[0], per_row):
        rows += [x[start:start + per_row].to(recon), recon[start:start + per_row]]
    return save_grid(torch.cat(rows), path, kind=kind, nrow=min(per_row, x.shape[0]))


def save_interpolation_grid(model: HierarchicalVAE, x_a: Tensor, x_b: Tensor, path: str | Path,
                            kind: str, *, steps: int = 10, temperature: Temperature = 0.0,
                            seed: int = 0) -> Path:
    """PNG: per pair a row x_a, the ``steps`` decoded interpolants of z_L, x_b."""
    inter = interpolate_top(model, x_a, x_b, steps, temperature, seed=seed)
    row = torch.cat([x_a.unsqueeze(1).to(inter), inter, x_b.unsqueeze(1).to(inter)], 1)
    images, nrow = _rows(row)
    return save_grid(images, path, kind=kind, nrow=nrow)


def write_samples(model, kind: str, out: Path, n: int, temperatures: list[float], seed: int,
                  mode: str = "mean", layer_temperatures: list[float] | None = None) -> Path:
    """Write a grid: row block t holds n samples at temperatures[t], same noise for each.

    With ``layer_temperatures`` (L values, layer 1 first) row t uses t * layer_temperatures.
    """
    temps: list = list(temperatures)
    if layer_temperatures is not None:
        if len(layer_temperatures) != model.n_layers:
            raise ValueError(f"--layer-temperatures: expected {model.n_layers} values (one per "
                             f"stochastic layer), found {len(layer_temperatures)}")
        temps = [[t * lt for lt in layer_temperatures] for t in temperatures]
    images = samples_at_temperatures(model, n, temps, seed=seed, mode=mode).flatten(0, 1)
    nrow = n if len(temps) > 1 else None
    return save_grid(images, out, kind=kind, nrow=nrow)


def write_reconstructions(model, split, kind: str, bits: int, out: Path, n: int = 32) -> Path:
    """Rows of originals and their reconstructions (mean of p(x|z), z ~ q(z|x))."""
    x = to_model_input(split.images[:n], kind, bits).to(model.out_conv.v.device)
    with torch.no_grad():
        recon = model.to_images(model(x).x_params, "mean")
    cols = min(n, 16)
    rows = []
    for start in range(0, n, cols):
        rows += [x[start:start + cols], recon[start:start + cols]]
    return save_grid(torch.cat(rows), out, kind=kind, nrow=cols)
