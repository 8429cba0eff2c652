"""Top-down residual hierarchies: VDVAE-style (Child 2021) and NVAE-style (Vahdat & Kautz 2020).

Notation: ``model.spec`` lists resolutions r_1 > r_2 > ... (image side first) with the latent
blocks at each; layer i = 1..L counts those blocks from the bottom, so z_1 is the decoder's
last block (at r_1, nearest x) and z_L its first (at the lowest resolution).

* Encoder (deterministic, once per image, shared by every importance sample): a 3x3 stem;
  if r_1 < the image side, one residual block there and an average pool to r_1; at each r_j
  its residual blocks
  (``model.encoder_spec``); an average pool leads to r_{j+1}. Latent block i reads encoder
  features a_i at its resolution: VDVAE's last block output there (one for all the blocks at
  r_j); NVAE's output of the encoder group mirroring block i (the encoder's blocks at r_j split
  into as many groups as there are latent blocks, the lowest group paired with z_1).
* Decoder state h: a learned constant at the lowest resolution; at each higher resolution
  ``h = unpool(h) + a learned constant`` (nearest neighbour, as VDVAE).
* A latent block at layer i (resolution r_j) reads s = h (VDVAE) or s = cell(h) (NVAE; h
  itself at the top, a constant) and:

  - VDVAE: ``(mu_p, sigma_p, h_p) = prior(s)``, ``h = s + h_p``;
    ``q = N(post(<s; a_i>))``; ``h = res(h + proj(z))``. Residual outputs and the z projection
    start scaled by sqrt(1 / N_blocks), the prior's last conv at zero.
  - NVAE: ``p = N(conv(elu(s)))``; the residual normal ``q = N(mu_p + dmu, sigma_p * dsigma)``
    with ``(dmu, dsigma)`` from ``conv(elu(a_i + proj(s)))``; ``h = s + proj(z)``.

* The top layer z_L has the prior N(0, I) in both (NVAE's top group; VDVAE's learned constant
  state makes its top prior a learned Gaussian, which the posterior and decoder absorb).
* After the last block: if r_1 is below the image side, unpool to it and one residual block
  there; then a 1x1 conv to the parameters of p(x|z).

Because q(z_i | x, z_>i) reads only the encoder and the layers above, drawing z_<=k from the
conditional prior gives the bound L^{>k} exactly as for BIVA's family (see
:meth:`TopDownVAE.forward`). Choices where the papers differ from this file are listed in
docs/guide/models.md ("VDVAE- and NVAE-style models").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biva.config import ConfigError, TopDownConfig, parse_spec
from biva.likelihoods import Likelihood, build_likelihood
from biva.models.base import HierarchyOutput, LatentHierarchy, check_pass
from biva.nn.flows import PosteriorFlow
from biva.nn.gaussian import DiagonalGaussian, repeat_batch, std_from_raw
from biva.nn.residual import (
    BottleneckBlock,
    NVAEDecoderCell,
    NVAEEncoderCell,
    SameConv2d,
    SpectralPenalty,
    conv,
    residual_scale,
)
from biva.nn.weightnorm import WNConv2d


def residual_normal(prior: DiagonalGaussian, shift: Tensor, scale: Tensor) -> DiagonalGaussian:
    """NVAE's posterior relative to its prior: N(mu_p + shift, (sigma_p * scale)^2)."""
    return DiagonalGaussian(prior.mu + shift, prior.sigma * scale)


class LatentBlock(nn.Module):
    """One decoder block and its latent z (N, z_ch, r, r): a prior step, a posterior step and
    the state update (see the module docstring). ``top``: the prior is N(0, I)."""

    def __init__(self, z_ch: int, resolution: int, top: bool, min_std: float):
        super().__init__()
        self.top, self.min_std = top, min_std
        self.z_ch, self.resolution = z_ch, resolution
        self.flow: PosteriorFlow | None = None

    def add_flow(self, width: int, steps: int) -> None:
        """Append ``steps`` IAF steps to the posterior (context: s + a, ``width`` channels).
        Called last in a subclass's ``__init__``: the other parameters are drawn first."""
        if steps > 0:
            self.flow = PosteriorFlow(self.z_ch, width, max(8, width // 2), steps)

    def state(self, h: Tensor) -> Tensor:
        """The features s the prior and posterior read from the decoder state h."""
        return h

    def _gaussian(self, params: Tensor) -> DiagonalGaussian:
        mu, raw = params.float().chunk(2, dim=1)   # float32 even under bf16 autocast
        return DiagonalGaussian(mu, std_from_raw(raw, self.min_std))

    def _top_prior(self, s: Tensor) -> tuple[DiagonalGaussian, Tensor]:
        shape = (s.shape[0], self.z_ch, self.resolution, self.resolution)
        zeros = s.new_zeros(shape, dtype=torch.float32)
        return DiagonalGaussian(zeros, torch.ones_like(zeros)), s

    def prior(self, s: Tensor) -> tuple[DiagonalGaussian, Tensor]:
        """p(z | z_above) from s (N, W, r, r) and the state the prior branch leaves."""
        raise NotImplementedError

    def posterior(self, s: Tensor, a: Tensor, prior: DiagonalGaussian) -> DiagonalGaussian:
        """q(z | x, z_above) from s and the layer's encoder features a (N, W, r, r)."""
        raise NotImplementedError

    def update(self, h: Tensor, z: Tensor) -> Tensor:
        """The state after z joins it."""
        return h + self.proj(z)

    def posterior_draw(self, s: Tensor, a: Tensor, prior: DiagonalGaussian, mode: str
                       ) -> tuple[DiagonalGaussian, Tensor, Tensor, Tensor | None]:
        """(q_0, z_0, z, log_det): the base posterior, its draw z_0 (its mean with
        ``mode="mean"``), z_0 pushed through the flow (z_0 itself without one) and the flow's
        log-determinant (N,) nats (None without one): log q(z) = log q_0(z_0) - log_det."""
        q = self.posterior(s, a, prior)
        z0 = q.take(mode)
        if self.flow is None:
            return q, z0, z0, None
        z, log_det = self.flow(z0, s + a)
        return q, z0, z, log_det


class VDVAEBlock(LatentBlock):
    """VDVAE's block: (p, h_p) = prior(s), h = s + h_p; q = N(post(<s; a>));
    h = res(h + proj(z)), residual outputs and proj scaled by sqrt(1 / N_blocks)."""

    def __init__(self, width: int, mid: int, z_ch: int, resolution: int, n_blocks: int,
                 top: bool, min_std: float, flows: int = 0):
        super().__init__(z_ch, resolution, top, min_std)
        scale = residual_scale(n_blocks)
        self.post = BottleneckBlock(2 * width, mid, 2 * z_ch, resolution)
        self.prior_net = (None if top else
                          BottleneckBlock(width, mid, 2 * z_ch + width, resolution,
                                          zero_last=True))
        self.proj = conv(z_ch, width, 1)
        self.res = BottleneckBlock(width, mid, width, resolution, residual=True,
                                   out_scale=scale)
        with torch.no_grad():
            self.proj.weight.mul_(scale)
        self.add_flow(width, flows)

    def prior(self, s: Tensor) -> tuple[DiagonalGaussian, Tensor]:
        if self.top:
            return self._top_prior(s)
        out = self.prior_net(s)
        params, h_p = out[:, :2 * self.z_ch], out[:, 2 * self.z_ch:]
        return self._gaussian(params), s + h_p

    def posterior(self, s: Tensor, a: Tensor, prior: DiagonalGaussian) -> DiagonalGaussian:
        return self._gaussian(self.post(torch.cat([s, a], dim=1)))

    def update(self, h: Tensor, z: Tensor) -> Tensor:
        return self.res(super().update(h, z))


class NVAEBlock(LatentBlock):
    """NVAE's block: s = cell(h); p = N(conv(elu(s))); the residual normal
    q = N(mu_p + dmu, sigma_p * dsigma) from conv(elu(a + post_in(s))); h = s + proj(z)."""

    def __init__(self, width: int, mid: int, z_ch: int, resolution: int, n_blocks: int,
                 top: bool, min_std: float, flows: int = 0):
        super().__init__(z_ch, resolution, top, min_std)
        self.cell = None if top else NVAEDecoderCell(width, mid)
        self.prior_net = None if top else conv(width, 2 * z_ch, 3)
        self.post_in = conv(width, width, 1)
        self.post = conv(width, 2 * z_ch, 3)
        self.proj = conv(z_ch, width, 1)
        self.add_flow(width, flows)

    def state(self, h: Tensor) -> Tensor:
        """cell(h); NVAE's top group reads the learned constant itself: a batch-normed cell on
        a state that is the same for every row would see a batch variance of 0 in training."""
        return h if self.top else self.cell(h)

    def prior(self, s: Tensor) -> tuple[DiagonalGaussian, Tensor]:
        if self.top:
            return self._top_prior(s)
        return self._gaussian(self.prior_net(F.elu(s))), s

    def posterior(self, s: Tensor, a: Tensor, prior: DiagonalGaussian) -> DiagonalGaussian:
        delta = self._gaussian(self.post(F.elu(a + self.post_in(s))))
        return residual_normal(prior, delta.mu, delta.sigma)


class VDVAEFamily:
    """What makes a hierarchy VDVAE-style: bottleneck residual blocks everywhere, one encoder
    feature map for all the latent blocks at a resolution."""

    latent_block = VDVAEBlock
    inner_width = 0.25

    @staticmethod
    def side_blocks(W: int, mid: int, side: int, n_enc: int, L: int) -> tuple[nn.Module, ...]:
        """The blocks at the image side, before the encoder and after the decoder."""
        return (BottleneckBlock(W, mid, W, side, residual=True, out_scale=residual_scale(n_enc)),
                BottleneckBlock(W, mid, W, side, residual=True, out_scale=residual_scale(L)))

    @staticmethod
    def encoder_stage(W: int, mid: int, r: int, n: int, n_enc: int) -> nn.Sequential:
        """The encoder's n blocks at resolution r."""
        return nn.Sequential(*[BottleneckBlock(W, mid, W, r, residual=True,
                                               out_scale=residual_scale(n_enc))
                               for _ in range(n)])

    @staticmethod
    def encode_stage(stage: nn.Sequential, h: Tensor, n_latent: int) -> tuple[Tensor, list]:
        """(the stage's output, the features each of its n_latent latent blocks reads)."""
        h = stage(h)
        return h, [h] * n_latent


class NVAEFamily:
    """What makes a hierarchy NVAE-style: NVAE's cells, one encoder group of cells per latent
    group (the encoder's cells at a resolution split evenly, the lowest group paired with the
    lowest latent)."""

    latent_block = NVAEBlock
    inner_width = 6.0

    @staticmethod
    def side_blocks(W: int, mid: int, side: int, n_enc: int, L: int) -> tuple[nn.Module, ...]:
        """NVAE's pre- and post-processing cells at the image side."""
        return NVAEEncoderCell(W), NVAEDecoderCell(W, mid)

    @staticmethod
    def encoder_stage(W: int, mid: int, r: int, n: int, n_enc: int) -> nn.Sequential:
        """The encoder's n cells at resolution r."""
        return nn.Sequential(*[NVAEEncoderCell(W) for _ in range(n)])

    @staticmethod
    def encode_stage(stage: nn.Sequential, h: Tensor, n_latent: int) -> tuple[Tensor, list]:
        """(the stage's output, each latent group's features: the output of its group of
        cells, the lowest group paired with the lowest latent)."""
        per_group, acts = len(stage) // n_latent, []
        for g in range(n_latent):
            h = stage[g * per_group:(g + 1) * per_group](h)
            acts.append(h)
        return h, acts


#: The top-down families by ``model.variant``.
FAMILIES = {"vdvae": VDVAEFamily, "nvae": NVAEFamily}
#: A block's inner channels as a multiple of ``filters`` when ``model.inner_width`` is 0.
PAPER_INNER_WIDTH = {name: f.inner_width for name, f in FAMILIES.items()}


class TopDownVAE(LatentHierarchy):
    """VDVAE- or NVAE-style hierarchy (``config.variant`` "vdvae" or "nvae"), see the module.

    The same interface as :class:`biva.models.HierarchicalVAE`: ``model(x)`` with x
    (B, C, H, W) in model-input space returns a :class:`HierarchyOutput`; L^{>k} via
    ``prior_layers``, the likelihood-ratio score via ``prior_mode="mean"``.
    """

    def __init__(self, config: TopDownConfig):
        super().__init__()
        config.validate()
        if not config.topdown:
            raise ConfigError(f"model.variant: TopDownVAE builds 'vdvae' or 'nvae', found "
                              f"{config.variant!r} (use HierarchicalVAE)")
        self.config, self.family = config, config.variant
        parts = self.parts = FAMILIES[self.family]   # the family's blocks, picked once
        c_in, side = config.input_shape[0], config.input_shape[-1]
        W = config.filters[0]
        mid = max(1, round(W * (config.inner_width or parts.inner_width)))
        L = self.n_layers = config.n_layers
        self.blocks_per_res = parse_spec(config.spec)           # [(r_j, blocks)], r_1 first
        self.resolutions = [r for r, _ in self.blocks_per_res]
        self.layer_res = config.layer_resolutions()            # per layer, layer 1 first
        z = tuple(config.latents) * L if len(config.latents) == 1 else tuple(config.latents)
        self.z_channels = tuple(int(c) for c in z)
        self.register_buffer("initialized", torch.tensor(False))

        enc = config.encoder_blocks()
        n_enc = sum(n for _, n in enc)
        self.stem = conv(c_in, W, 3)
        # Below the image side, one block at the image resolution on each side (NVAE's pre-
        # and post-processing cells; VDVAE has blocks there): without them p(x|z) would be
        # one set of parameters per r_1 x r_1 patch of pixels.
        self.in_block = self.out_block = None
        if self.resolutions[0] < side:
            self.in_block, self.out_block = parts.side_blocks(W, mid, side, n_enc, L)
        self.encoder = nn.ModuleList(                          # one nn.Sequential per r_j
            [parts.encoder_stage(W, mid, r, n, n_enc) for r, n in enc])
        self.state_bias = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, W, r, r)) for r in self.resolutions])
        self.blocks = nn.ModuleList(                           # decoder order: layer L first
            [parts.latent_block(W, mid, self.z_channels[i - 1], self.layer_res[i - 1], L,
                                i == L, config.min_std, config.posterior_flows)
             for i in range(L, 0, -1)])
        self.likelihood: Likelihood = build_likelihood(
            config.likelihood, n_mix=config.n_mix, bits=config.bits,
            num_classes=config.num_classes, fixed_std=config.likelihood_std)
        self.out_conv = WNConv2d(W, self.likelihood.param_channels(c_in), 1, init_scale=0.1)
        self.group_names = [f"z{i}" for i in range(1, L + 1)]
        # The plain convolutions (the blocks' same-padded ones and the flows' context inputs);
        # not the flows' masked ones or the weight-normed output.
        self.spectral = SpectralPenalty(
            [m for m in self.modules() if type(m) in (nn.Conv2d, SameConv2d)])
        self._side = side

    def latent_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one example's latent at ``layer`` (1..L): (channels, r, r)."""
        r = self.layer_res[layer - 1]
        return (self.z_channels[layer - 1], r, r)

    def spectral_penalty(self) -> Tensor:
        """NVAE's regularizer: the sum of the convolutions' largest singular values (scalar)."""
        return self.spectral()

    # ----------------------------------------------------------------------------- passes
    def _bottom_up(self, x: Tensor, n_samples: int) -> list[Tensor]:
        """Encoder features a_i (N, W, r, r) of every layer, layer 1 first; computed on the B
        input rows once and repeated to N = n_samples * B rows (no sample enters them)."""
        h = self.stem(x)
        if self.in_block is not None:
            h = F.avg_pool2d(self.in_block(h), h.shape[-1] // self.resolutions[0])
        acts: list[Tensor] = []
        for j, stage in enumerate(self.encoder):
            h, features = self.parts.encode_stage(stage, h, self.blocks_per_res[j][1])
            repeated: dict[int, Tensor] = {}   # a feature map shared by blocks: repeated once
            acts += [repeated.setdefault(id(a), repeat_batch(a, n_samples)) for a in features]
            if j + 1 < len(self.encoder):
                h = F.avg_pool2d(h, self.resolutions[j] // self.resolutions[j + 1])
        return acts

    def _decoder_order(self) -> list[tuple[int, int, LatentBlock]]:
        """(resolution index j, layer, block) in decoder order: layer L first."""
        order, layer = [], self.n_layers
        for j in range(len(self.resolutions) - 1, -1, -1):
            for _ in range(self.blocks_per_res[j][1]):
                order.append((j, layer, self.blocks[self.n_layers - layer]))
                layer -= 1
        return order

    def _enter_resolution(self, h: Tensor | None, j: int, n_rows: int) -> Tensor:
        """The decoder state at resolution j: the learned constant (the lowest resolution),
        else the unpooled state plus it."""
        bias = self.state_bias[j]
        if h is None:
            return bias.expand(n_rows, -1, -1, -1)
        up = self.resolutions[j] // self.resolutions[j + 1]
        return F.interpolate(h, scale_factor=up, mode="nearest") + bias

    def _x_params(self, h: Tensor) -> Tensor:
        """The parameters of p(x|z) (N, P, H, W) from the last decoder state."""
        if self.out_block is not None:
            h = self.out_block(F.interpolate(h, scale_factor=self._side // h.shape[-1],
                                             mode="nearest"))
        return self.out_conv(h)

    def forward(self, x: Tensor, *, n_samples: int = 1, prior_layers: int = 0,
                bottom_up: list[Tensor] | None = None,
                top_log_prior: Callable[[Tensor], Tensor] | None = None,
                prior_mode: str = "sample", posterior_mode: str = "sample") -> HierarchyOutput:
        """One pass: x (B, C, H, W) -> :class:`HierarchyOutput` with N = n_samples * B rows.

        ``prior_layers = k``: z_1..z_k are drawn from the conditional prior (their means with
        ``prior_mode="mean"``, a score rather than a bound), z_>k from q, giving L^{>k}: q(z_>k|x)
        never reads z_<=k, so ``E[log p(x|z) + log p(z_>k) - log q(z_>k|x)] <= log p(x)``.
        ``loss`` is the negative bound (training adds free bits, the KL weight and
        ``spectral_reg`` x :meth:`spectral_penalty`: :mod:`biva.objectives.training`).
        ``bottom_up``: a result of ``_bottom_up`` at N rows to reuse; ``top_log_prior(z_L)``
        replaces the N(0, I) log-density of z_L; ``posterior_mode="mean"`` takes each q-layer's
        mean instead of a draw (a code for :meth:`encode`, not a bound).
        """
        check_pass(prior_layers, self.n_layers, prior_mode, posterior_mode)
        acts = bottom_up if bottom_up is not None else self._bottom_up(x, n_samples)
        kl: dict[str, Tensor] = {}
        latents: dict[str, Tensor] = {}
        posteriors: dict[str, DiagonalGaussian] = {}

        h, current = None, None
        for j, layer, block in self._decoder_order():
            if j != current:
                h, current = self._enter_resolution(h, j, acts[0].shape[0]), j
            s = block.state(h)
            p, h = block.prior(s)
            name = f"z{layer}"
            if layer <= prior_layers:
                z = p.sample() if prior_mode == "sample" else p.mu
            else:
                q, z0, z, log_det = block.posterior_draw(s, acts[layer - 1], p, posterior_mode)
                # log p before log q: the order autograd accumulates z's gradients in (pinned
                # by tests/test_family_fixtures.py).
                log_p = (top_log_prior(z) if top_log_prior is not None and layer == self.n_layers
                         else p.log_prob(z))
                log_q = q.log_prob(z0) if log_det is None else q.log_prob(z0) - log_det
                kl[name], posteriors[name] = log_q - log_p, q
            latents[name] = z
            h = block.update(h, z)
        x_params = self._x_params(h)
        return self._output(x, x_params, kl, latents, posteriors, n_samples)

    def _generate(self, given: Mapping[str, Tensor], n: int, temps: list[float],
                  generator: torch.Generator | None,
                  td_context: Sequence[Tensor | None] | None) -> Tensor:
        """The decoder from the ``given`` layers (see :meth:`LatentHierarchy.decode`): p(x|z)
        parameters (n, P, H, W); the other layers drawn from their priors in decoder order."""
        if td_context is not None:
            raise ValueError(f"{self.family}: class conditioning (td_context) is available for "
                             "the BIVA family only")
        h, current = None, None
        for j, layer, block in self._decoder_order():
            if j != current:
                h, current = self._enter_resolution(h, j, n), j
            p, h = block.prior(block.state(h))
            if f"z{layer}" in given:
                z = given[f"z{layer}"].to(p.mu.dtype)
            else:
                noise = torch.randn(p.mu.shape, generator=generator, device=p.mu.device,
                                    dtype=p.mu.dtype)
                z = p.sample(temps[layer - 1], noise)
            h = block.update(h, z)
        return self._x_params(h)
