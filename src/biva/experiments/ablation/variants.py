"""The ablation's variants: how each one's model and training config derive from the base
config (VAE, LVAE, LVAE+, LVAE+ with 2L-1 layers, BIVA, and the VDVAE- and NVAE-style
hierarchies of about the same cost)."""

from __future__ import annotations

from dataclasses import replace

from biva.config import ConfigError, ModelConfig, as_variant
from biva.config.presets import topdown_equivalent

#: Variant name -> what it is. Names are lower case; the order is the table's.
ABLATION_VARIANTS = {
    "vae": "hierarchical VAE: q(z_1|x) q(z_i+1|z_i), no skips",
    "lvae": "Ladder VAE: deterministic BU path, top-down inference",
    "lvae+": "LVAE + the deterministic top-down skip path (eq. 5)",
    "lvae+2l-1": "LVAE+ with 2L-1 stochastic layers (as many latent groups as BIVA)",
    "biva": "BIVA: stochastic BU path (z^BU) and top-down inference (z^TD)",
    "vdvae": "VDVAE-style: deterministic encoder, top-down residual blocks with a latent each",
    "nvae": "NVAE-style: NVAE cells, residual-normal posterior, spectral regularization",
    "nvae+flows": "NVAE-style with 2 IAF steps on every group's posterior (NVAE's num_nf 1)",
}



#: What ``biva ablation`` trains by default: the paper's section 4.1 (the top-down families
#: join with ``--variants``).
PAPER_VARIANTS = ("vae", "lvae", "lvae+", "lvae+2l-1", "biva")



#: train.spectral_reg of an nvae run whose config leaves it at 0 (NVAE used 1e-2 to 1e-1).
NVAE_SPECTRAL_REG = 0.01

#: model.posterior_flows of the nvae+flows variant.
ABLATION_FLOWS = 2



def doubled_depth(model: ModelConfig) -> ModelConfig:
    """The hierarchy with 2L-1 stochastic layers that has BIVA's latent groups as layers.

    Layer i < L of ``model`` becomes two layers (for BIVA's z^BU_i and z^TD_i), both with
    ``latents[i]`` units, layer i's filters and kernel, the first with layer i's stride and
    the second with stride 1 (so both sit at BIVA's resolution r_i); layer L stays one layer.
    The result holds as many latent units as the BIVA of ``model``.
    """
    L = model.n_layers
    filters, kernels, strides = (model.per_layer(n) for n in ("filters", "kernels", "strides"))
    out: dict[str, list[int]] = {"latents": [], "filters": [], "kernels": [], "strides": []}
    for i in range(L):
        for copy in range(2 if i < L - 1 else 1):
            out["latents"].append(model.latents[i])
            out["filters"].append(filters[i])
            out["kernels"].append(kernels[i])
            out["strides"].append(strides[i] if copy == 0 else 1)
    cfg = replace(model, **{k: tuple(v) for k, v in out.items()})
    cfg.validate()
    return cfg



def ablation_train(train, variant: str):
    """The train config of one variant: spectral regularization only for the top-down
    families, NVAE's at :data:`NVAE_SPECTRAL_REG` unless the config sets one."""
    if variant in ("nvae", "nvae+flows"):
        return replace(train, spectral_reg=train.spectral_reg or NVAE_SPECTRAL_REG)
    if variant == "vdvae":
        return train
    return replace(train, spectral_reg=0.0)



def ablation_model(model: ModelConfig, variant: str) -> ModelConfig:
    """The base ``model`` turned into one of :data:`ABLATION_VARIANTS`."""
    if variant not in ABLATION_VARIANTS:
        raise ConfigError(f"variant {variant!r}: expected one of {list(ABLATION_VARIANTS)}")
    if variant == "lvae+2l-1":
        return doubled_depth(as_variant(model, "lvae+"))
    if variant == "nvae+flows":
        return replace(ablation_model(model, "nvae"), posterior_flows=ABLATION_FLOWS)
    if variant in ("vdvae", "nvae"):
        return topdown_equivalent(model, variant)
    cfg = as_variant(model, variant)
    cfg.validate()
    return cfg
