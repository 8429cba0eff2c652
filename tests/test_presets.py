"""Every model preset builds, takes a training step (gradients reach > 90% of its
parameters) and evaluates a finite L_2, for every variant of its family: at one block a stage
with 3x3 conv latent kernels, and once more at the conv presets' real latent kernels."""

from __future__ import annotations

import math

import pytest
import torch
from shipped import FAST_LATENT_KERNEL, family_pairs

from biva import importance_weighted_bound
from biva.config import TOPDOWN_VARIANTS
from biva.config.presets import PRESETS, preset
from biva.data import to_model_input
from biva.models import build_hierarchy
from biva.objectives.training import training_loss


def _one_block(name: str, **kw):
    """A preset with one block a stage (BIVA family) or as it is (top-down families)."""
    variant = kw.get("variant", preset(name).variant)
    return preset(name, **kw) if variant in TOPDOWN_VARIANTS else preset(name, blocks=1, **kw)


def _conv_presets() -> list[str]:
    """The BIVA-family presets with conv latents, and the top-down presets of natural32-cpu's
    shape (conv latents too)."""
    return sorted(n for n in PRESETS if (preset(n).latent_type == "conv" if not preset(n).topdown
                                         else "natural32-cpu" in n))


@pytest.mark.parametrize(("name", "variant"),
                         family_pairs(sorted(PRESETS), lambda n: preset(n).variant))
@pytest.mark.slow
def test_preset_builds_trains_and_evaluates_l_k(name, variant):
    cfg = _one_block(name, variant=variant)
    if not cfg.topdown and cfg.latent_type == "conv":
        cfg = _one_block(name, variant=variant, latent_kernel=FAST_LATENT_KERNEL)
    _step_and_bound(cfg)


@pytest.mark.filterwarnings("error")  # e.g. torch's warning on even kernels with "same"
@pytest.mark.parametrize("name", _conv_presets())
@pytest.mark.slow
def test_conv_preset_at_its_real_latent_kernel(name):
    _step_and_bound(_one_block(name))


def _step_and_bound(cfg) -> None:
    """Init, one loss + backward (gradients reach > 90% of the parameters) and L_2: finite."""
    torch.manual_seed(0)
    model = build_hierarchy(cfg)
    shape = (2, *cfg.input_shape)
    if cfg.likelihood == "bernoulli":
        x = torch.bernoulli(torch.full(shape, 0.3))
    else:
        x = to_model_input(torch.randint(0, 256, shape, dtype=torch.uint8), "8bit", cfg.bits)
    model.initialize(x)
    out = model(x)
    out.loss = training_loss(out, free_bits=2.0)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert out.kl.shape == (2, model.n_groups)
    # VDVAE's prior blocks start with a zero last conv (every prior starts as the same
    # Gaussian), and so do the posterior flows' steps (each starts as a fixed scaling), so at
    # the first step no gradient reaches their inner convs: by design.
    grads = [p.grad for name, p in model.named_parameters() if p.requires_grad
             and not (cfg.variant == "vdvae" and ".prior_net.c" in name
                      and ".prior_net.c4." not in name)
             and not (".flow.steps." in name and ".out." not in name)]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    lk = importance_weighted_bound(model, x, 2)
    assert lk.shape == (2,) and torch.isfinite(lk).all()
