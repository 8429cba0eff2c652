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
from typing import NamedTuple, TypeVar

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

T = TypeVar("T")


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

    def at(self, i: int) -> tuple[Tensor, Tensor | None, DiagonalGaussian | None]:
        """Layer i's (1..L-1) d~_{i,M} and, on a stochastic BU path, z^BU_i and q(z^BU_i | x)
        (None, None without one)."""
        if not self.z_bu:
            return self.features[i - 1], None, None
        return self.features[i - 1], self.z_bu[i - 1], self.q_bu[i - 1]


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


class BottomUpLayer(nn.Module):
    """Layer i of the inference path: BU stage i (r_{i-1} -> r_i, eqs. 7-8) and the posterior
    read off its last features d~_{i,M}: q(z^BU_i | d~_{i,M}) (eq. 9) with the embedding
    through which z^BU_i enters stage i + 1 (a stochastic BU path, i < L), or q(z_L | x) at the
    top. ``head`` and ``embed`` are None where the variant has no such latent."""

    def __init__(self, stage: Stage, head: LatentHead | None = None,
                 embed: LatentEmbedding | None = None):
        super().__init__()
        self.stage, self.head, self.embed = stage, head, embed

    def forward(self, h: Tensor, skips: list[Tensor] | None) -> list[Tensor]:
        """The stage's block outputs d~_{i,1..M} (N, F_i, r_i, r_i) from its input features h
        and the block outputs of the stage below (``skips``, with ``bu_skip``)."""
        return self.stage(h, skips)

    def posterior(self, d: Tensor) -> DiagonalGaussian:
        """q(z^BU_i | d~_{i,M}) (q(z_L | x) at the top) from d = d~_{i,M}."""
        return self.head(d)[0]


class TopDownLayer(nn.Module):
    """Layer i (1..L-1) of the generative path with its prior step and posterior step.

    TD stage i maps z_{i+1} (its parts) and the block outputs of TD stage i + 1 to d_{i,1..M}
    (eqs. 4-5; :meth:`forward`); the prior step reads p(z_i | z_>i) off d_{i,M} (eq. 6; BIVA:
    p(z^BU_i | .) and p(z^TD_i | .)); the posterior step draws z_i from q: BIVA's z^BU_i from
    the BU pass and z^TD_i from q(z^TD_i | <d~_{i,M}; d_{i,M}>) (eq. 10, the ``merge`` block and
    ``posterior_head``), an LVAE's z_i from that merged posterior, the VAE's from the BU pass.
    Layer 0 is TD stage 0 alone: the features p(x|z) is read from.
    """

    def __init__(self, index: int, variant: Variant, stage: Stage, embed: LatentEmbedding,
                 prior_head: LatentHead | None = None, merge: GatedResBlock | None = None,
                 posterior_head: LatentHead | None = None, shared_prior: bool = False):
        super().__init__()
        self.index, self.variant, self.shared_prior = index, variant, shared_prior
        self.stage, self.embed = stage, embed
        self.prior_head, self.merge, self.posterior_head = prior_head, merge, posterior_head
        self.names = ([] if index == 0 else [f"z{index}_bu", f"z{index}_td"]
                      if variant.split_latent else [f"z{index}"])

    def forward(self, zs: list[Tensor], skips: list[Tensor] | None,
                context: Tensor | None = None) -> list[Tensor]:
        """The block outputs d_{i,1..M} (N, F_i, r_i, r_i; F_1 channels for layer 0) from
        z_{i+1}'s parts ``zs`` and TD stage i + 1's block outputs (``skips``, used with
        ``td_skip``). ``context`` (optional) is added to the stage's input features; it must
        broadcast to (N, F_{i+1}, r_{i+1}, r_{i+1}) (a class embedding, see
        :mod:`biva.models.semi_supervised`)."""
        h = self.embed(zs)
        if context is not None:
            h = h + context
        return self.stage(h, skips if self.variant.td_skip else None)

    def prior(self, d: Tensor) -> list[DiagonalGaussian]:
        """p(z_i | z_>i) from d = d_{i,M}, one Gaussian per part of z_i (BIVA: [p(z^BU_i|.),
        p(z^TD_i|.)], one Gaussian twice when ``model.biva_prior`` is shared)."""
        dists = self.prior_head(d)
        return dists * 2 if self.shared_prior else dists

    def posterior(self, d: Tensor, bu: tuple[Tensor, Tensor | None, DiagonalGaussian | None],
                  mode: str) -> list[tuple[Tensor, DiagonalGaussian]]:
        """(z, q) for each part of z_i given d = d_{i,M} and the BU pass at this layer
        (``BottomUp.at(i)``); z is a draw of q, or its mean with ``mode="mean"``."""
        features, z_bu, q_bu = bu
        parts = [(z_bu, q_bu)] if self.variant.stochastic_bu else []
        if self.variant.td_inference:
            q_td = self.posterior_head(self.merge(features, d))[0]
            td = (q_td.take(mode), q_td)
            parts = [*parts, td] if self.variant.split_latent else [td]
        return parts


class HierarchicalVAE(LatentHierarchy):
    """BIVA and its ablations (LVAE, LVAE+, VAE), selected by ``config.variant``.

    ``model(x)`` with x: (B, C, H, W) in model-input space (see ``biva.data.to_model_input``)
    returns a :class:`HierarchyOutput`. Call :meth:`initialize` once on a data batch before
    training (data-dependent weight-norm init); its result is part of ``state_dict``.

    ``bu_layers[i - 1]`` is layer i's :class:`BottomUpLayer` (i = 1..L); ``td_layers[i]`` is
    layer i's :class:`TopDownLayer` (i = 0..L-1; z_L's prior is N(0, I)).
    """

    def __init__(self, config: HierarchyConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.variant = HIERARCHY_VARIANTS[config.variant]
        self.n_layers = config.n_layers
        self.register_buffer("initialized", torch.tensor(False))
        sizes = _Sizes.of(config)
        self.bu_layers = _bottom_up_layers(self.variant, sizes)
        self.td_layers = _top_down_layers(self.variant, sizes, config.biva_prior == "shared")
        self.likelihood: Likelihood = build_likelihood(
            config.likelihood, n_mix=config.n_mix, bits=config.bits,
            num_classes=config.num_classes, fixed_std=config.likelihood_std)
        self.out_conv = WNConv2d(sizes.F[1], self.likelihood.param_channels(sizes.c_in), 1,
                                 init_scale=0.1)
        self.group_names = [n for layer in self.td_layers for n in layer.names]
        self.group_names.append(f"z{self.n_layers}")
        # Under bf16 autocast the latent heads still emit float32 (mu, sigma), so latent draws
        # and the log-densities of the bound are never rounded to bf16.
        for head in self.modules():
            if isinstance(head, LatentHead):
                head.proj.float_output = True
        self.register_load_state_dict_pre_hook(_upgrade_on_load)

    # ----------------------------------------------------------------------------- structure
    def latent_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one example's latent at ``layer`` (1..L): (n,) dense, (n, r, r) conv."""
        units = self.config.latents[layer - 1]
        if self.config.latent_type == "dense":
            return (units,)
        side = self.config.spatial_sizes()[layer]
        return (units, side, side)

    def upgrade_state_dict(self, state: Mapping[str, T]) -> dict[str, T]:
        """``state`` (a state dict, or any dict keyed like one) with the keys of checkpoints
        written before the per-layer modules renamed to the current ones."""
        return _renamed(state, {old: new for new, old in self.older_key_names().items()})

    def older_key_names(self) -> dict[str, str]:
        """{current key: key in checkpoints written before the per-layer modules} for the
        state_dict keys that were renamed."""
        return {k: older[2] for k in self.state_dict()
                if (older := _older_key(k, self.n_layers)) is not None}

    def legacy_parameter_names(self) -> list[str]:
        """The current parameter names in the order the code before the per-layer modules
        registered them: the order of an optimizer state saved by that code."""
        position = {n: k for k, (n, _) in enumerate(self.named_parameters())}
        older = {n: _older_key(n, self.n_layers) for n in position}
        # Parameters outside the old lists keep their place before (a subclass's own
        # parameters: named_parameters lists them first) or after (likelihood, out_conv) them.
        first = min(position[n] for n, o in older.items() if o is not None)

        def rank(n: str) -> tuple[int, int]:
            if older[n] is not None:
                return older[n][:2]
            return (-1 if position[n] < first else len(_LEGACY_LISTS), 0)

        return sorted(position, key=lambda n: (*rank(n), position[n]))

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
        h, skips = x, None
        *below, top = self.bu_layers
        for layer in below:
            outs.append(layer(h, skips))
            pieces = []
            if layer.head is not None:   # z^BU_i, entering the stage above embedded
                q = layer.posterior(outs[-1][-1])
                q_bu.append(q if expanded else q.expand(n_samples))
                z_bu.append(q_bu[-1].take(posterior_mode))
                if not expanded:
                    outs = [[repeat_batch(t, n_samples) for t in o] for o in outs]
                    expanded = True
                pieces.append(layer.embed([z_bu[-1]]))
            if self.variant.bu_skip:
                pieces.append(outs[-1][-1])
            h = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)
            skips = outs[-1] if self.variant.bu_skip else None
        outs.append(top(h, skips))
        q_top = top.posterior(outs[-1][-1])
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

    def _stages_down(self, td_context: Sequence[Tensor | None] | None
                     ) -> list[tuple[TopDownLayer, Tensor | None]]:
        """(layer, its class context) for layers L-1 .. 1, top first."""
        contexts = td_context if td_context is not None else [None] * self.n_layers
        return list(zip(self.td_layers, contexts, strict=True))[:0:-1]

    def _to_x_params(self, zs: list[Tensor], skips: list[Tensor] | None,
                     td_context: Sequence[Tensor | None] | None) -> Tensor:
        """TD stage 0 on z_1 (and TD stage 1's block outputs): the parameters of p(x|z)."""
        context = td_context[0] if td_context is not None else None
        return self.out_conv(self.td_layers[0](zs, skips, context)[-1])

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
        Optional: ``td_context`` (one entry per TD layer 0..L-1, N rows, see
        :meth:`TopDownLayer.forward`) and ``bottom_up``, a result of ``_bottom_up`` at N rows
        to reuse (one y-independent BU pass for several TD passes).
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
        for layer, context in self._stages_down(td_context):
            skips = layer(zs, skips, context)
            priors = layer.prior(skips[-1])
            if layer.index <= prior_layers:
                zs = [p.sample() if prior_mode == "sample" else p.mu for p in priors]
                latents.update(zip(layer.names, zs, strict=True))
                continue
            parts = layer.posterior(skips[-1], bu.at(layer.index), posterior_mode)
            # Every log p before any log q: the order autograd accumulates z's gradients in
            # (pinned by tests/test_family_fixtures.py).
            p_logs = [p.log_prob(z) for (z, _), p in zip(parts, priors, strict=True)]
            for name, (z, q), p_log in zip(layer.names, parts, p_logs, strict=True):
                record(name, z, q, p_log)
            zs = [z for z, _ in parts]
        x_params = self._to_x_params(zs, skips, td_context)
        return self._output(x, x_params, kl, latents, posteriors, n_samples)

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
        for layer, context in self._stages_down(td_context):
            skips = layer(zs, skips, context)
            if layer.names[0] in given:
                zs = [given[g] for g in layer.names]
            else:
                zs = [p.sample(temps[layer.index - 1],
                               torch.randn(p.mu.shape, generator=generator, device=device,
                                           dtype=dtype))
                      for p in layer.prior(skips[-1])]
        return self._to_x_params(zs, skips, td_context)


# --------------------------------------------------------------------------------- building
def _bottom_up_layers(v: Variant, sz: _Sizes) -> nn.ModuleList:
    """BU layers 1..L: stage i; q(z^BU_i | d~_{i,M}) and the embedding of z^BU_i (i < L, with
    ``stochastic_bu``); q(z_L | x) on the top one. Parameters are drawn from the global RNG
    stages first, then the heads: the order of the code before the per-layer modules, so a
    seed gives the same initial weights."""
    L, F, r = len(sz.n) - 1, sz.F, sz.r
    stages = []
    for i in range(1, L + 1):
        in_ch = sz.c_in if i == 1 else F[i - 1] * (int(v.stochastic_bu) + int(v.bu_skip))
        skip_ch = F[i - 1] if (v.bu_skip and i > 1) else 0
        stages.append(Stage(in_ch, F[i], r[i - 1], r[i], sz.M, sz.K[i], sz.dropout_q,
                            skip_ch=skip_ch, skip_size=r[i - 1]))
    layers = nn.ModuleList()
    for i in range(1, L):
        if v.stochastic_bu:
            head = sz.head(i, 1)
            layers.append(BottomUpLayer(stages[i - 1], head, LatentEmbedding(
                sz.n[i], F[i], r[i], sz.conv, sz.lk[i])))
        else:
            layers.append(BottomUpLayer(stages[i - 1]))
    layers.append(BottomUpLayer(stages[L - 1], sz.head(L, 1)))
    return layers


def _top_down_layers(v: Variant, sz: _Sizes, shared: bool) -> nn.ModuleList:
    """TD layers 0..L-1: stage i (r[i+1] -> r[i]) and the embedding of z_{i+1} (shared by p
    and the TD inference path); for i >= 1 the prior p(z_i | z_>i) and, with ``td_inference``,
    the merge block and head of q(z^TD_i | <d~_{i,M}; d_{i,M}>). ``shared``: one prior
    Gaussian for BIVA's z^BU_i and z^TD_i (``model.biva_prior``). Built in the order of the
    code before the per-layer modules (see :func:`_bottom_up_layers`)."""
    L, F, r = len(sz.n) - 1, sz.F, sz.r
    parts = 2 if v.split_latent else 1  # z_i = <z^BU_i; z^TD_i> in BIVA
    shared = parts == 2 and shared
    stages, embeds = [], []
    for i in range(0, L):
        # The skips of TD stage i are the block outputs of TD stage i + 1: F[i + 1]
        # channels at side r[i + 1] (stage L - 1, the top one, has none).
        skip = v.td_skip and i < L - 1
        stages.append(Stage(F[i + 1], F[i] if i > 0 else F[1], r[i + 1], r[i], sz.M,
                            sz.K[i + 1], sz.dropout_p, skip_ch=F[i + 1] if skip else 0,
                            skip_size=r[i + 1]))
        z_units = sz.n[i + 1] * (parts if i + 1 < L else 1)
        embeds.append(LatentEmbedding(z_units, F[i + 1], r[i + 1], sz.conv, sz.lk[i + 1]))
    priors = [sz.head(i, 1 if shared else parts) for i in range(1, L)]
    merges, heads = [None] * L, [None] * L
    if v.td_inference:
        for i in range(1, L):
            merges[i] = GatedResBlock(F[i], F[i], r[i], r[i], 3, aux_ch=F[i],
                                      dropout=sz.dropout_q)
            heads[i] = sz.head(i, 1)
    return nn.ModuleList(
        [TopDownLayer(0, v, stages[0], embeds[0])] +
        [TopDownLayer(i, v, stages[i], embeds[i], priors[i - 1], merges[i], heads[i], shared)
         for i in range(1, L)])


# --------------------------------------------------------------------------- older checkpoints
# Checkpoints written before the per-layer modules hold the parameters in lists by kind. Each
# entry: (old list, new list, the part's name in a layer, layer index shift), in the order the
# old code registered them.
_LEGACY_LISTS = (
    ("bu_stages", "bu_layers", "stage", 0), ("bu_heads", "bu_layers", "head", 0),
    ("bu_embed", "bu_layers", "embed", 0), ("top_head", "bu_layers", "head", None),
    ("td_stages", "td_layers", "stage", 0), ("td_embed", "td_layers", "embed", 0),
    ("prior_heads", "td_layers", "prior_head", 1), ("merges", "td_layers", "merge", 1),
    ("td_heads", "td_layers", "posterior_head", 1),
)


def _older_key(name: str, n_layers: int) -> tuple[int, int, str] | None:
    """(rank of its list in the older registration order, index in that list, the older key)
    of a current parameter or buffer key; None for keys outside the old lists."""
    layers, _, rest = name.partition(".")
    index, _, rest = rest.partition(".")
    part, _, tail = rest.partition(".")
    for rank, (old, new, p, shift) in enumerate(_LEGACY_LISTS):
        if layers != new or part != p:
            continue
        top = shift is None
        if new == "bu_layers" and part == "head" and (int(index) == n_layers - 1) != top:
            continue
        if top:
            return rank, 0, f"{old}.{tail}"
        j = int(index) - shift
        return rank, j, f"{old}.{j}.{tail}"
    return None


def _renamed(state: Mapping[str, T], names: Mapping[str, str]) -> dict[str, T]:
    """``state`` with each key in ``names`` replaced by its value (order kept)."""
    return {names.get(k, k): v for k, v in state.items()}


def _upgrade_on_load(module: HierarchicalVAE, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: an older checkpoint's keys renamed in place."""
    names = {prefix + old: prefix + new for new, old in module.older_key_names().items()}
    if any(k in names for k in state_dict):
        upgraded = _renamed(state_dict, names)
        state_dict.clear()
        state_dict.update(upgraded)
