"""Each anomaly score selects its own quantity, checked against its definition on the same
draws, for the BIVA family and the top-down families.

The latent noise is made a fixed function of each latent's shape (``DiagonalGaussian.sample``
patched), so a sweep and direct ``forward`` calls see the same draws. Then:

* every bound of a sweep, (mode, k), equals ``forward(prior_layers=k, prior_mode=mode)``;
* every score (elbo, lk, lk_mean, llr, llr_mean) is the formula of its definition over them;
* the ``mean`` bounds put z_<=k at the conditional prior *means*: changing the noise of the
  layers <= k leaves them unchanged (models whose q never reads a draw of z_<=k: the LVAEs
  and the top-down families), while the drawn bounds move. A bug that computes ``llr_mean``
  from the drawn lower latents fails here.
"""

from __future__ import annotations

import pytest
import torch

from biva import preset
from biva.config import ModelConfig
from biva.models import build_hierarchy
from biva.nn.gaussian import DiagonalGaussian
from biva.ood.scores import SCORES, bound_sweep

KS = (0, 1, 2)


def _model(kind: str):
    torch.manual_seed(0)
    if kind in ("vdvae", "nvae"):
        # Layers with distinct latent shapes: z1 (2, 8, 8), z2 (2, 4, 4), z3 (2, 2, 2).
        cfg = ModelConfig(variant=kind, input_shape=(1, 8, 8), likelihood="bernoulli",
                          latents=(2,), filters=(8,), spec="8x1,4x1,2x1")
    else:
        # Dense latents of 16, 12 and 8 units: each layer's shape is its own.
        cfg = preset("digits", variant=kind, filters=(8,), blocks=1, dropout_q=0.0,
                     dropout_p=0.0)
    model = build_hierarchy(cfg)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    model.initialize(x)
    with torch.no_grad():          # move VDVAE's zero-initialized priors off N(0, I)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), x


def _fixed_noise(monkeypatch, layer1_shape=None, layer1_seed=0):
    """Latent draws mu + t * sigma * eps(shape): eps a fixed function of the event shape (a
    different one for ``layer1_shape`` when ``layer1_seed`` changes)."""
    def sample(self, temperature=1.0, noise=None):
        if noise is None:
            event = tuple(self.mu.shape[1:])
            seed = hash(event) % (2**31) + (layer1_seed if event == layer1_shape else 0)
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(self.mu.shape[1:], generator=g).expand_as(self.mu)
        return self.mu + (temperature * self.sigma) * noise

    monkeypatch.setattr(DiagonalGaussian, "sample", sample)


@pytest.mark.parametrize("kind", ["biva", "vae", "lvae", "lvae+", "vdvae", "nvae"])
def test_every_score_of_a_sweep_is_its_definition_on_the_same_draws(kind, monkeypatch):
    model, x = _model(kind)
    _fixed_noise(monkeypatch)
    sweep = bound_sweep(model, x, KS, scores=SCORES, n_samples=1)
    with torch.no_grad():
        direct = {(mode, k): model(x, prior_layers=k, prior_mode=mode).log_weight.double()
                  for mode in ("sample", "mean") for k in KS}
    assert set(sweep.bounds) == {("sample", 0), ("sample", 1), ("sample", 2), ("mean", 1),
                                 ("mean", 2)}
    for key, value in sweep.bounds.items():
        torch.testing.assert_close(value, direct[key], msg=f"bound {key}")
    L = direct[("sample", 0)]
    definition = {
        "elbo": lambda k: L,
        "lk": lambda k: direct[("sample", k)],
        "lk_mean": lambda k: direct[("mean", k)],
        "llr": lambda k: L - direct[("sample", k)],
        "llr_mean": lambda k: L - direct[("mean", k)],
    }
    for score in SCORES:
        for k in ((0,) if score == "elbo" else (1, 2)):
            torch.testing.assert_close(sweep.value(score, k), definition[score](k),
                                       msg=f"{score} at k={k}")
            sign = 1 if score.startswith("llr") else -1
            torch.testing.assert_close(sweep.anomaly(score, k), sign * definition[score](k))
    # The prior-mean bounds are not the drawn ones (else the test above could not tell them).
    assert not torch.allclose(direct[("mean", 1)], direct[("sample", 1)])


@pytest.mark.parametrize("kind", ["lvae", "lvae+", "vdvae", "nvae"])
def test_prior_mean_bounds_ignore_the_noise_of_the_lower_layers(kind, monkeypatch):
    model, x = _model(kind)
    layer1 = model.latent_shape(1)
    results = {}
    for seed in (0, 1):
        _fixed_noise(monkeypatch, layer1_shape=layer1, layer1_seed=seed)
        results[seed] = bound_sweep(model, x, KS, scores=SCORES, n_samples=1)
    a, b = results[0], results[1]
    # z_1 at its prior mean: the noise drawn for layer 1 does not enter L^{>1} (mean) ...
    torch.testing.assert_close(a.value("lk_mean", 1), b.value("lk_mean", 1))
    # ... while it does enter the drawn L^{>1} and, at k = 0, q's z_1 (both bounds).
    assert not torch.allclose(a.value("lk", 1), b.value("lk", 1))
    assert not torch.allclose(a.value("elbo", 0), b.value("elbo", 0))
