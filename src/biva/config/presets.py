"""Named model presets: the architectures of appendix C and CPU-sized versions of them."""

from __future__ import annotations

from dataclasses import replace

from biva.config.model import (
    ConfigError,
    HierarchyConfig,
    ModelConfig,
    TopDownConfig,
    as_variant,
)


def _binary(**kw) -> ModelConfig:
    # Appendix C, binary images: L = 6, 64 filters, M = 3, 5x5 kernels in stage 1, stride 2 in
    # stages 1 and 6 (28 -> 14 -> 7), dense latents 48..8, dropout 0.5 in q and p.
    base = HierarchyConfig(
        input_shape=(1, 28, 28), likelihood="bernoulli", latents=(48, 40, 32, 24, 16, 8),
        latent_type="dense", filters=(64,), kernels=(5, 3, 3, 3, 3, 3),
        strides=(2, 1, 1, 1, 1, 2), blocks=3, dropout_q=0.5, dropout_p=0.5)
    return replace(base, **kw)


def _natural32(n_layers: int = 15, **kw) -> ModelConfig:
    # Appendix C, 32x32: 96 filters, M = 3, 5x5 in stage 1; stride 2 in stages 1, 11 and 15
    # (32 -> 16 -> 8 -> 4); conv latents 38, 36, ..., 10; dropout 0.2 in q, none in p.
    # For L != 15 (the LVAE+ L = 29 ablation) the strides are spread the same way: stride 2 at
    # the first layer, at 2/3 of the depth (rounded up) and at the top.
    strides = [1] * n_layers
    strides[0] = strides[-1] = 2
    strides[round(n_layers * 10 / 15)] = 2
    latents = tuple(max(2, 38 - 2 * i) for i in range(n_layers))
    base = HierarchyConfig(
        input_shape=(3, 32, 32), likelihood="discretized_logistic", latents=latents,
        latent_type="conv", latent_kernel=0, filters=(96,), kernels=(5,) + (3,) * (n_layers - 1),
        strides=tuple(strides), blocks=3, dropout_q=0.2, dropout_p=0.0, n_mix=10)
    return replace(base, **kw)


def _natural64(**kw) -> ModelConfig:
    # Appendix C, 64x64: L = 20; 7x7 and 5x5 stride-2 stages 1-2, 64 filters up to stage 11
    # (stride 2), 128 filters for 12-20 (stride 2 at 20): 64 -> 32 -> 16 -> 8 -> 4;
    # conv latents 20, 19, ..., 1.
    strides = [2, 2] + [1] * 8 + [2] + [1] * 8 + [2]
    base = HierarchyConfig(
        input_shape=(3, 64, 64), likelihood="discretized_logistic",
        latents=tuple(range(20, 0, -1)), latent_type="conv", latent_kernel=0,
        filters=(64,) * 11 + (128,) * 9, kernels=(7, 5) + (3,) * 18, strides=tuple(strides),
        blocks=3, dropout_q=0.2, dropout_p=0.0, n_mix=10)
    return replace(base, **kw)


def _natural_cpu(side: int, **kw) -> ModelConfig:
    # Sized for bits/dim per CPU-minute by short pilots on 32x32 photos
    # (docs/guide/own-images.md): L = 6 conv latents of 16 channels with 3x3 latent kernels,
    # 32 filters, one block a stage, 5 logistic components. 32x32: latents at 16, 16, 16, 8,
    # 8, 4; 64x64 halves twice in stage 1 (7x7 kernel) and once more by the top: 16, 16, 8, 8,
    # 4, 4.
    strides = (2, 1, 1, 2, 1, 2) if side == 32 else (4, 1, 2, 1, 2, 1)
    first = 5 if side == 32 else 7
    base = HierarchyConfig(
        input_shape=(3, side, side), likelihood="discretized_logistic", latents=(16,) * 6,
        latent_type="conv", latent_kernel=3, filters=(32,), kernels=(first,) + (3,) * 5,
        strides=strides, blocks=1, dropout_q=0.2, dropout_p=0.0, n_mix=5)
    return replace(base, **kw)


def _digits(**kw) -> ModelConfig:
    # scikit-learn's 8x8 digits: a small BIVA that trains in minutes on 2 CPU cores.
    base = HierarchyConfig(
        input_shape=(1, 8, 8), likelihood="bernoulli", latents=(16, 12, 8), latent_type="dense",
        filters=(32,), kernels=(3,), strides=(2, 1, 2), blocks=2, dropout_q=0.1, dropout_p=0.1)
    return replace(base, **kw)


#: Width of a top-down model relative to the BIVA-family model it replaces, so that a training
#: step costs about as much: on natural32-cpu (32 photos, one thread, bf16, idle cores) BIVA
#: took 0.47 s a step, VDVAE-style at 3x its filters 0.55 s, NVAE-style at 1x 0.77 s (its
#: narrowest; 2026-12-02).
EQUAL_COST_WIDTH = {"vdvae": 3, "nvae": 1}


def topdown_equivalent(model: ModelConfig, family: str) -> ModelConfig:
    """The VDVAE- or NVAE-style hierarchy (``family``) of the same shape as a BIVA-family
    ``model``: one latent block per layer at that layer's resolution, the widest stage's
    filters x :data:`EQUAL_COST_WIDTH` as the width; conv latents keep their channels, a
    dense latent of n units gets ceil(n / r^2) channels at side r (at least as many units).
    A top-down ``model`` keeps its own spec, encoder_spec, latents and filters."""
    if model.topdown:
        cfg = as_variant(model, family)
    else:
        sides = model.spatial_sizes()[1:]
        spec: list[list[int]] = []
        for r in sides:
            if spec and spec[-1][0] == r:
                spec[-1][1] += 1
            else:
                spec.append([r, 1])
        if model.latent_type == "conv":
            latents = tuple(model.latents)
        else:
            latents = tuple(-(-n // (r * r)) for n, r in zip(model.latents, sides, strict=True))
        cfg = as_variant(model, family, spec=",".join(f"{r}x{n}" for r, n in spec),
                         encoder_spec="", latents=latents,
                         filters=(max(model.filters) * EQUAL_COST_WIDTH[family],))
    cfg.validate()
    return cfg


def _vdvae_cifar10(**kw) -> ModelConfig:
    # VDVAE's CIFAR-10 model (Child 2021, hparams "cifar10"): width 384, 16-channel latents,
    # bottleneck 0.25; decoder blocks 1x1, 4x3, 8x6, 16x11, 32x22 (its "m" blocks counted
    # with their resolution), encoder 32x12, 16x7, 8x7, 4x4, 1x3; 10 logistic components.
    # 39.05M parameters here against the paper's 39M.
    base = TopDownConfig(
        variant="vdvae", input_shape=(3, 32, 32), likelihood="discretized_logistic",
        latents=(16,), filters=(384,), spec="32x22,16x11,8x6,4x3,1x1",
        encoder_spec="32x12,16x7,8x7,4x4,1x3", inner_width=0.25, n_mix=10,
        dropout_q=0.0, dropout_p=0.0)
    return replace(base, **kw)


def _nvae_cifar10(**kw) -> ModelConfig:
    # NVAE's CIFAR-10 layout (Vahdat & Kautz 2020): one latent scale at 16x16 with 30 groups of
    # 20 channels, 128 channels, two encoder cells a group, decoder cells with expansion 6;
    # 10 logistic components. Not here: its pre/post-processing cells (a stem and average
    # pool instead) and second decoder cell a group (27.7M parameters); its IAF flows
    # (num_nf 1: a pair of autoregressive cells a group) in nvae-cifar10-flows.
    base = TopDownConfig(
        variant="nvae", input_shape=(3, 32, 32), likelihood="discretized_logistic",
        latents=(20,), filters=(128,), spec="16x30", encoder_spec="16x60", inner_width=6.0,
        n_mix=10, dropout_q=0.0, dropout_p=0.0)
    return replace(base, **kw)


PRESETS = {
    # Binary images (MNIST, OMNIGLOT, Fashion-MNIST), the paper's size: 31.5M parameters.
    "binary": lambda: _binary(description="Appendix C binary-image BIVA, L=6"),
    # Same structure sized for a CPU: 32 filters, 2 blocks a stage.
    "binary-cpu": lambda: _binary(filters=(32,), blocks=2, dropout_q=0.2, dropout_p=0.2,
                                  description="CPU-sized binary-image BIVA, L=6"),
    "natural32": lambda: _natural32(description="Appendix C 32x32 BIVA, L=15"),
    # Photos on a CPU (natural32_cpu / natural64_cpu configs, `biva train --data PATH`).
    "natural32-cpu": lambda: _natural_cpu(32, description="CPU-sized 32x32 BIVA, L=6"),
    "natural64-cpu": lambda: _natural_cpu(64, description="CPU-sized 64x64 BIVA, L=6"),
    "natural64": lambda: _natural64(description="Appendix C 64x64 BIVA, L=20"),
    "digits": lambda: _digits(description="Small BIVA for 8x8 digits"),
    # The top-down families at paper scale (CIFAR-10) and at the CPU hierarchies' shapes (one
    # latent block per layer of natural32-cpu / binary-cpu: what `biva ablation` trains).
    "vdvae-cifar10": lambda: _vdvae_cifar10(description="VDVAE-style CIFAR-10 model, 43 layers"),
    "nvae-cifar10": lambda: _nvae_cifar10(description="NVAE-style CIFAR-10 model, 30 groups"),
    "nvae-cifar10-flows": lambda: _nvae_cifar10(
        posterior_flows=2, description="NVAE-style CIFAR-10 model, 30 groups, 2 IAF steps a "
        "group (NVAE's num_nf = 1)"),
    "vdvae-natural32-cpu": lambda: replace(
        topdown_equivalent(_natural_cpu(32), "vdvae"),
        description="CPU-sized 32x32 VDVAE-style model, L=6"),
    "nvae-natural32-cpu": lambda: replace(
        topdown_equivalent(_natural_cpu(32), "nvae"),
        description="CPU-sized 32x32 NVAE-style model, L=6"),
    "vdvae-binary-cpu": lambda: replace(
        topdown_equivalent(_binary(filters=(32,)), "vdvae"),
        description="CPU-sized binary-image VDVAE-style model, L=6"),
    "nvae-binary-cpu": lambda: replace(
        topdown_equivalent(_binary(filters=(32,)), "nvae"),
        description="CPU-sized binary-image NVAE-style model, L=6"),
    # The CPU hierarchies with 2 IAF steps on every group's posterior.
    "nvae-natural32-cpu-flows": lambda: replace(
        topdown_equivalent(_natural_cpu(32), "nvae"), posterior_flows=2,
        description="CPU-sized 32x32 NVAE-style model, L=6, 2 IAF steps a group"),
    "nvae-binary-cpu-flows": lambda: replace(
        topdown_equivalent(_binary(filters=(32,)), "nvae"), posterior_flows=2,
        description="CPU-sized binary-image NVAE-style model, L=6, 2 IAF steps a group"),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named :class:`ModelConfig` (see ``PRESETS``) with fields replaced by ``overrides``.

    ``preset("natural32", variant="lvae")`` gives the LVAE ablation of Table 1;
    ``preset("natural32-l29", variant="lvae+")`` the LVAE+ with 2L-1 = 29 layers.
    """
    if name == "natural32-l29":
        cfg = _natural32(n_layers=29, description="32x32 hierarchy with 29 layers")
    elif name in PRESETS:
        cfg = PRESETS[name]()
    else:
        names = sorted([*PRESETS, "natural32-l29"])
        raise ConfigError(f"unknown preset {name!r}; expected one of {names}")
    cfg = as_variant(cfg, overrides.pop("variant", cfg.variant), **overrides)
    cfg.validate()
    return cfg
