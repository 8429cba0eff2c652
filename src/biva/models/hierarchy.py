"""One hierarchy, four models: VAE, LVAE, LVAE+ and BIVA (Maaloe et al. 2019, appendix B).

Notation (bottom to top, layer i = 1..L; r_i is the feature-map side after stage i):

* Bottom-up (BU) stage i, parameters phi, maps r_{i-1} -> r_i with M gated blocks g_{i,j}:
  ``d~_{i,0} = x`` (i = 1) else ``<z^BU_{i-1}; d~_{i-1,M}>`` (eq. 7) and
  ``d~_{i,j} = <g_{i,j}(d~_{i,j-1}); d~_{i-1,j}>`` (eq. 8). BIVA samples
  ``z^BU_i ~ q(z^BU_i | d~_{i,M})`` (eq. 9) for i < L, and ``z_L ~ q(z_L | d~_{L,M})``.
* Top-down (TD) stage i, parameters theta, shared by p and q, maps r_{i+1} -> r_i (the mirror
  of BU stage i+1): ``d_{i,0} = z_{i+1}`` (eq. 4), ``d_{i,j} = <f_{i,j}(d_{i,j-1}); d_{i+1,j}>``
  (eq. 5, with d_{L,j} = 0). ``p(z^BU_i | z_{>i})`` and ``p(z^TD_i | z_{>i})`` come from one
  head on ``d_{i,M}`` (eq. 6). TD stage 0 (f_0) maps z_1 and d_{1,.} to the parameters of p(x|z).
* The TD posterior (eq. 10) is ``q(z^TD_i | <d~_{i,M}; d_{i,M}>)``: an inference-only gated
  "merge" block that takes d~_{i,M} as input and d_{i,M} as auxiliary input, then a head.

Choices where the paper is silent (also in docs/guide/models.md):

* ``<a; b>`` is a concatenation followed by the first convolution of the next block; a conv of
  a concatenation equals the sum of convs, so the skip ``b`` enters a block as its auxiliary
  input (resampled to the block's input size when the resolutions differ).
* The stride of a stage sits in its first block. ``<z^BU_{i-1}; d~_{i-1,M}>`` concatenates a
  learned embedding of the latent (dense: linear + reshape, conv: conv) with the features.
* BIVA's z^BU_i and z^TD_i both have ``latents[i]`` units; ``z_i = <z^BU_i; z^TD_i>`` is
  embedded jointly for the stage below.

The four variants differ only in the switches of a :class:`Variant` (see
:data:`HIERARCHY_VARIANTS`): ``stochastic_bu`` (z^BU latents on the BU path; VAE's whole
inference path is stochastic), ``bu_skip`` (d~ features flow up through eq. 7/8; off for the
VAE, whose q(z_{i+1}|z_i) sees only z_i), ``td_inference`` (posterior merges d~ and d: LVAE,
LVAE+, BIVA), ``td_skip`` (the deterministic top-down path of eq. 5: LVAE+ and BIVA) and
``split_latent`` (z_i = <z^BU_i; z^TD_i>: BIVA).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from biva.config import HierarchyConfig
from biva.likelihoods import Likelihood, build_likelihood
from biva.models.base import HierarchyOutput, LatentHierarchy, check_pass
from biva.nn.blocks import GatedResBlock, Stage
from biva.nn.gaussian import (
    DiagonalGaussian,
    LatentEmbedding,
    LatentHead,
    repeat_batch,
    standard_normal_log_prob,
)
from biva.nn.weightnorm import WNConv2d


@dataclass(frozen=True)
class Variant:
    """What one model of the family is: which of the hierarchy's paths it has."""

    stochastic_bu: bool   # z^BU latents on the bottom-up path
    bu_skip: bool         # deterministic bottom-up features d~ (eqs. 7-8)
    td_inference: bool    # q(z^TD_i | <d~_{i,M}; d_{i,M}>): the posterior merges both paths
    td_skip: bool         # the deterministic top-down path of eq. 5
    split_latent: bool    # z_i = <z^BU_i; z^TD_i>, each with its own prior and posterior


HIERARCHY_VARIANTS = {
    "vae": Variant(stochastic_bu=True, bu_skip=False, td_inference=False, td_skip=False,
                   split_latent=False),
    "lvae": Variant(stochastic_bu=False, bu_skip=True, td_inference=True, td_skip=False,
                    split_latent=False),
    "lvae+": Variant(stochastic_bu=False, bu_skip=True, td_inference=True, td_skip=True,
                     split_latent=False),
    "biva": Variant(stochastic_bu=True, bu_skip=True, td_inference=True, td_skip=True,
                    split_latent=True),
}


class BottomUp(NamedTuple):
    """The BU pass at N rows: each stage's last features d~_{i,M} (i = 1..L), the posteriors
    q(z^BU_i | x) and their draws z^BU_i (i < L; empty without a stochastic BU path), and
    q(z_L | x)."""

    features: list[Tensor]
    q_bu: list[DiagonalGaussian]
    z_bu: list[Tensor]
    q_top: DiagonalGaussian


@dataclass(frozen=True)
class _Sizes:
    """The hierarchy's sizes, 1-based like the paper (index 0 unused where it has no stage):
    r[i] the feature-map side after stage i (r[0] the input), F[i] channels and K[i] first
    kernel of stage i, n[i] units (or maps) of latent i, lk[i] its conv kernel."""

    c_in: int
    r: list[int]
    F: tuple[int, ...]
    K: tuple[int, ...]
    n: tuple[int, ...]
    lk: list[int]
    conv: bool
    M: int
    dropout_q: float
    dropout_p: float
    min_std: float

    @classmethod
    def of(cls, config: HierarchyConfig) -> _Sizes:
        r = config.spatial_sizes()
        return cls(c_in=config.input_shape[0], r=r, F=(0,) + config.per_layer("filters"),
                   K=(0,) + config.per_layer("kernels"), n=(0,) + tuple(config.latents),
                   lk=[config.latent_kernel or r[i] for i in range(config.n_layers + 1)],
                   conv=config.latent_type == "conv", M=config.blocks,
                   dropout_q=config.dropout_q, dropout_p=config.dropout_p,
                   min_std=config.min_std)

    def head(self, i: int, parts: int) -> LatentHead:
        """A Gaussian head for ``parts`` latents of layer i on stage i's features."""
        return LatentHead(self.F[i], self.r[i], [self.n[i]] * parts, self.conv, self.lk[i],
                          self.min_std)


class HierarchicalVAE(LatentHierarchy):
    """BIVA and its ablations (LVAE, LVAE+, VAE), selected by ``config.variant``.

    ``model(x)`` with x: (B, C, H, W) in model-input space (see ``biva.data.to_model_input``)
    returns a :class:`HierarchyOutput`. Call :meth:`initialize` once on a data batch before
    training (data-dependent weight-norm init); its result is part of ``state_dict``.
    """

    def __init__(self, config: HierarchyConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.variant = HIERARCHY_VARIANTS[config.variant]
        self.n_layers = config.n_layers
        self.register_buffer("initialized", torch.tensor(False))
        sizes = _Sizes.of(config)
        # Built in this order: parameters are initialized from the global RNG in it.
        self._build_bottom_up(sizes)
        self._build_top_down(sizes)
        self.likelihood: Likelihood = build_likelihood(
            config.likelihood, n_mix=config.n_mix, bits=config.bits,
            num_classes=config.num_classes, fixed_std=config.likelihood_std)
        self.out_conv = WNConv2d(sizes.F[1], self.likelihood.param_channels(sizes.c_in), 1,
                                 init_scale=0.1)
        self.group_names = self._group_names()
        # Under bf16 autocast the latent heads still emit float32 (mu, sigma), so latent draws
        # and the log-densities of the bound are never rounded to bf16.
        for head in (*self.bu_heads, self.top_head, *self.prior_heads, *self.td_heads):
            head.proj.float_output = True

    def _build_bottom_up(self, sz: _Sizes) -> None:
        """BU stages 1..L, q(z^BU_i | d~_{i,M}) heads and z^BU embeddings (i < L), q(z_L | x)."""
        v, L, F, r = self.variant, self.n_layers, sz.F, sz.r
        self.bu_stages = nn.ModuleList()
        for i in range(1, L + 1):
            if i == 1:
                in_ch = sz.c_in
            else:
                in_ch = F[i - 1] * (int(v.stochastic_bu) + int(v.bu_skip))
            skip_ch = F[i - 1] if (v.bu_skip and i > 1) else 0
            self.bu_stages.append(Stage(in_ch, F[i], r[i - 1], r[i], sz.M, sz.K[i],
                                        sz.dropout_q, skip_ch=skip_ch, skip_size=r[i - 1]))
        self.bu_heads = nn.ModuleList()        # q(z^BU_i | d~_{i,M}), i < L
        self.bu_embed = nn.ModuleList()        # z^BU_i -> features entering BU stage i + 1
        if v.stochastic_bu:
            for i in range(1, L):
                self.bu_heads.append(sz.head(i, 1))
                self.bu_embed.append(LatentEmbedding(sz.n[i], F[i], r[i], sz.conv, sz.lk[i]))
        self.top_head = sz.head(L, 1)

    def _build_top_down(self, sz: _Sizes) -> None:
        """TD stages 0..L-1 and their z embeddings (shared by p and the TD inference path),
        the conditional priors p(z_i | z_>i), and the TD posteriors' merge blocks and heads."""
        v, L, F, r = self.variant, self.n_layers, sz.F, sz.r
        parts = 2 if v.split_latent else 1  # z_i = <z^BU_i; z^TD_i> in BIVA
        self.td_stages = nn.ModuleList()       # td_stages[i]: r[i+1] -> r[i], i = 0..L-1
        self.td_embed = nn.ModuleList()        # td_embed[i]: z_{i+1} -> features, i = 0..L-1
        self.prior_heads = nn.ModuleList()     # prior_heads[i-1]: p(z_i | z_>i), i = 1..L-1
        for i in range(0, L):
            out_ch = F[i] if i > 0 else F[1]
            # The skips of TD stage i are the block outputs of TD stage i + 1: F[i + 1]
            # channels at side r[i + 1] (stage L - 1, the top one, has none).
            skip = v.td_skip and i < L - 1
            self.td_stages.append(Stage(F[i + 1], out_ch, r[i + 1], r[i], sz.M, sz.K[i + 1],
                                        sz.dropout_p, skip_ch=F[i + 1] if skip else 0,
                                        skip_size=r[i + 1]))
            z_units = sz.n[i + 1] * (parts if i + 1 < L else 1)
            self.td_embed.append(LatentEmbedding(z_units, F[i + 1], r[i + 1], sz.conv,
                                                 sz.lk[i + 1]))
        # model.biva_prior = "shared": one Gaussian serves as p(z^BU_i|.) and p(z^TD_i|.).
        self.shared_prior = parts == 2 and self.config.biva_prior == "shared"
        for i in range(1, L):
            self.prior_heads.append(sz.head(i, 1 if self.shared_prior else parts))
        self.merges = nn.ModuleList()          # q(z^TD_i | <d~_{i,M}; d_{i,M}>), i = 1..L-1
        self.td_heads = nn.ModuleList()
        if v.td_inference:
            for i in range(1, L):
                self.merges.append(GatedResBlock(F[i], F[i], r[i], r[i], 3, aux_ch=F[i],
                                                 dropout=sz.dropout_q))
                self.td_heads.append(sz.head(i, 1))

    # ----------------------------------------------------------------------------- structure
    def _group_names(self) -> list[str]:
        names = []
        for i in range(1, self.n_layers):
            names += self._layer_names(i)
        return names + [f"z{self.n_layers}"]

    def latent_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one example's latent at ``layer`` (1..L): (n,) dense, (n, r, r) conv."""
        units = self.config.latents[layer - 1]
        if self.config.latent_type == "dense":
            return (units,)
        side = self.config.spatial_sizes()[layer]
        return (units, side, side)

    # ----------------------------------------------------------------------------- inference
    def _bottom_up(self, x: Tensor, n_samples: int, posterior_mode: str = "sample") -> BottomUp:
        """The BU pass at N = n_samples * B rows (see :class:`BottomUp`); z^BU_i is a draw of
        its posterior, or its mean with ``posterior_mode="mean"``.

        Work that does not depend on a sample runs once on the B input rows: all of it for the
        LVAEs, stage 1 for BIVA and the VAE. Tensors are repeated to N = n_samples * B rows
        only when they first meet a sample.
        """
        outs: list[list[Tensor]] = []
        q_bu: list[DiagonalGaussian] = []
        z_bu: list[Tensor] = []
        expanded = n_samples == 1
        for i, stage in enumerate(self.bu_stages):
            if i == 0:
                h, skips = x, None
            else:
                pieces = []
                if self.variant.stochastic_bu:
                    if not expanded:
                        outs = [[repeat_batch(t, n_samples) for t in o] for o in outs]
                        expanded = True
                    pieces.append(self.bu_embed[i - 1]([z_bu[i - 1]]))
                if self.variant.bu_skip:
                    pieces.append(outs[i - 1][-1])
                h = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)
                skips = outs[i - 1] if self.variant.bu_skip else None
            outs.append(stage(h, skips))
            if self.variant.stochastic_bu and i < self.n_layers - 1:
                q = self.bu_heads[i](outs[i][-1])[0]
                q = q if expanded else q.expand(n_samples)
                q_bu.append(q)
                z_bu.append(q.take(posterior_mode))
        q_top = self.top_head(outs[-1][-1])[0]
        if not expanded:
            q_top = q_top.expand(n_samples)
        last = [o[-1] if expanded else repeat_batch(o[-1], n_samples) for o in outs]
        return BottomUp(last, q_bu, z_bu, q_top)

    def top_posterior(self, x: Tensor) -> DiagonalGaussian:
        """q(z_L | x) from the BU pass alone: mean and std (B, *latent_shape(L)).

        For BIVA and the VAE the pass draws z^BU_<L on the way, so a sample of the result is a
        sample of q(z_L | x); the TD pass, the likelihood and the log-densities are skipped.
        Draws the same random numbers as the start of :meth:`forward`.
        """
        return self._bottom_up(x, 1).q_top

    def _td_stage(self, i: int, zs: list[Tensor], skips: list[Tensor] | None,
                  td_context: Sequence[Tensor | None] | None) -> list[Tensor]:
        """TD stage i (r[i+1] -> r[i]) on z_{i+1}'s parts ``zs`` and the block outputs of
        stage i + 1 (``skips``, used with ``td_skip``); returns its block outputs, the last
        being d_{i,M}. ``td_context[i]`` (optional, one entry per TD stage i = 0..L-1) is added
        to the stage's input features; it must broadcast to (N, F[i+1], r[i+1], r[i+1]) (e.g. a
        class embedding, see :mod:`biva.models.semi_supervised`)."""
        h = self.td_embed[i](zs)
        if td_context is not None and td_context[i] is not None:
            h = h + td_context[i]
        return self.td_stages[i](h, skips if self.variant.td_skip else None)

    def _posterior_step(self, i: int, d: Tensor, bu: BottomUp, priors: list[DiagonalGaussian],
                        posterior_mode: str) -> tuple[list[Tensor], list[tuple]]:
        """Layer i drawn from q given the TD features d_{i,M}: BIVA's z^BU_i (from the BU pass)
        and z^TD_i; an LVAE's z_i from the merged posterior; the VAE's z_i from the BU pass.
        Returns z_i's parts and, for each, (name, z, q, log p(z | z_>i))."""
        if self.variant.td_inference:
            q_td = self.td_heads[i - 1](self.merges[i - 1](bu.features[i - 1], d))[0]
            z_td = q_td.take(posterior_mode)
        if self.variant.split_latent:
            parts = [(bu.z_bu[i - 1], bu.q_bu[i - 1]), (z_td, q_td)]
        elif self.variant.td_inference:
            parts = [(z_td, q_td)]
        else:
            parts = [(bu.z_bu[i - 1], bu.q_bu[i - 1])]
        terms = [(name, z, q, p.log_prob(z))
                 for name, (z, q), p in zip(self._layer_names(i), parts, priors, strict=True)]
        return [z for z, _ in parts], terms

    def priors(self, i: int, d: Tensor) -> list[DiagonalGaussian]:
        """The conditional priors of layer i (1..L-1) from the TD features d_{i,M}: BIVA
        [p(z^BU_i|z_>i), p(z^TD_i|z_>i)] (one Gaussian twice when ``biva_prior`` is shared),
        else [p(z_i|z_>i)]."""
        dists = self.prior_heads[i - 1](d)
        return dists * 2 if self.shared_prior else dists

    def forward(self, x: Tensor, *, n_samples: int = 1, prior_layers: int = 0,
                td_context: Sequence[Tensor | None] | None = None,
                bottom_up: tuple | None = None,
                top_log_prior: Callable[[Tensor], Tensor] | None = None,
                prior_mode: str = "sample", posterior_mode: str = "sample") -> HierarchyOutput:
        """One pass: x (B, C, H, W) -> :class:`HierarchyOutput` with N = n_samples * B rows.

        ``prior_layers = k`` gives the L^{>k} bound (eq. 2): layers 1..k are drawn from the
        conditional prior p(z_<=k | z_>k) -- for BIVA both z^BU_i and z^TD_i -- while z_>k come
        from q. BIVA's q(z_>k | x) still conditions on the q-draws of z^BU_<=k, which act as
        auxiliary variables: with r(a | x, z_>k) = q(a | x) for a = z^BU_<=k,
        ``E[log p(x|z) + log p(z_>k) - log q(z_>k | x, a)] <= log p(x)`` (Jensen twice), and the
        same holds for the VAE's q(z_<=k | x). k = 0 is the ELBO. ``loss`` is the negative bound
        (training's free bits and KL weight: :mod:`biva.objectives.training`).
        Optional: ``td_context`` (see :meth:`_td_stage`, N rows) and ``bottom_up``, a result of
        ``_bottom_up`` at N rows to reuse (one y-independent BU pass for several TD passes).
        ``top_log_prior(z_L) -> (N,)`` replaces the N(0, I) log-density of z_L (e.g. a 2-D
        potential, see :mod:`biva.experiments.densities`); None keeps the standard normal.
        ``prior_mode="mean"`` sets z_<=k to the conditional prior means instead of drawing them
        (the likelihood-ratio score of Havtorn et al. 2021): a score, *not* a bound on log p(x).
        ``posterior_mode="mean"`` takes every q-layer's mean instead of a draw (a deterministic
        code, see :meth:`encode`; not a bound either).
        """
        check_pass(prior_layers, self.n_layers, prior_mode, posterior_mode)
        bu = (BottomUp(*bottom_up) if bottom_up is not None
              else self._bottom_up(x, n_samples, posterior_mode))
        kl: dict[str, Tensor] = {}
        latents: dict[str, Tensor] = {}
        posteriors: dict[str, DiagonalGaussian] = {}

        def record(name: str, z: Tensor, q: DiagonalGaussian, p_log: Tensor) -> None:
            kl[name] = q.log_prob(z) - p_log
            latents[name], posteriors[name] = z, q

        z_top = bu.q_top.take(posterior_mode)
        record(f"z{self.n_layers}", z_top, bu.q_top, standard_normal_log_prob(z_top)
               if top_log_prior is None else top_log_prior(z_top))
        zs, skips = [z_top], None
        for i in range(self.n_layers - 1, 0, -1):
            skips = self._td_stage(i, zs, skips, td_context)
            priors = self.priors(i, skips[-1])
            if i <= prior_layers:
                zs = [p.sample() if prior_mode == "sample" else p.mu for p in priors]
                latents.update(zip(self._layer_names(i), zs, strict=True))
            else:
                zs, terms = self._posterior_step(i, skips[-1], bu, priors, posterior_mode)
                for term in terms:
                    record(*term)
        x_params = self.out_conv(self._td_stage(0, zs, skips, td_context)[-1])
        return self._output(x, x_params, kl, latents, posteriors, n_samples)

    def _layer_names(self, i: int) -> list[str]:
        return [f"z{i}_bu", f"z{i}_td"] if self.variant.split_latent else [f"z{i}"]

    def _generate(self, given: Mapping[str, Tensor], n: int, temps: list[float],
                  generator: torch.Generator | None,
                  td_context: Sequence[Tensor | None] | None) -> Tensor:
        """The TD pass from the ``given`` layers (see :meth:`LatentHierarchy.decode`): p(x|z)
        parameters (n, P, H, W); z_L, when not given, is drawn first (N(0, temps[-1]^2 I))."""
        device, dtype = self.out_conv.v.device, self.out_conv.v.dtype
        top = f"z{self.n_layers}"
        if top in given:
            z_top = given[top]
        else:
            shape = (n, *self.latent_shape(self.n_layers))
            unit = DiagonalGaussian(torch.zeros(shape, device=device, dtype=dtype),
                                    torch.ones(shape, device=device, dtype=dtype))
            z_top = unit.sample(temps[-1], torch.randn(shape, generator=generator,
                                                       device=device, dtype=dtype))
        zs, skips = [z_top], None
        for i in range(self.n_layers - 1, 0, -1):
            skips = self._td_stage(i, zs, skips, td_context)
            names = self._layer_names(i)
            if names[0] in given:
                zs = [given[g] for g in names]
            else:
                zs = [p.sample(temps[i - 1], torch.randn(p.mu.shape, generator=generator,
                                                         device=device, dtype=dtype))
                      for p in self.priors(i, skips[-1])]
        return self.out_conv(self._td_stage(0, zs, skips, td_context)[-1])
