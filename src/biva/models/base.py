"""What every latent hierarchy shares: its output record and the generation verbs.

:class:`LatentHierarchy` is the base of BIVA's family (:mod:`biva.models.hierarchy`) and of the
top-down residual families (:mod:`biva.models.topdown`). A subclass defines ``forward`` (with
``posterior_mode``), ``latent_shape``, ``_generate`` (the top-down pass from given latents),
``group_names``, ``likelihood`` and ``out_conv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from biva.models.latents import Decoding, Encoding, GroupPosterior
from biva.nn.gaussian import DiagonalGaussian, repeat_batch
from biva.nn.weightnorm import data_dependent_init
from biva.utils.rng import seeded_eval

T = TypeVar("T")


@dataclass
class HierarchyOutput:
    """What one pass of the model returns. N = n_samples * B rows, sample-major.

    ``log_weight`` = log p(x|z) + log p(z_>k) - log q(z_>k|x): nats, (N,); its mean is the ELBO
    (k = 0) or L^{>k}. ``kl`` (N, G) holds log q - log p per latent group (one-sample Monte
    Carlo), 0 for groups drawn from the prior. ``loss``: the negative mean bound (scalar);
    training replaces it by :func:`biva.objectives.training.training_loss`.
    """

    loss: Tensor
    log_weight: Tensor
    log_px: Tensor
    kl: Tensor
    group_names: list[str]
    x_params: Tensor
    latents: dict[str, Tensor]
    posteriors: dict[str, DiagonalGaussian]
    n_samples: int

    @property
    def elbo(self) -> Tensor:
        """Per-example ELBO (or L^{>k}) in nats, averaged over the samples: (B,)."""
        return self.log_weight.view(self.n_samples, -1).mean(0)

    @property
    def kl_per_group(self) -> Tensor:
        """Per-example KL of each group, averaged over samples: (B, G) nats."""
        return self.kl.view(self.n_samples, -1, self.kl.shape[1]).mean(0)


def check_pass(prior_layers: int, n_layers: int, prior_mode: str, posterior_mode: str) -> None:
    """The arguments of a pass that every family checks the same way, one line each."""
    if not 0 <= prior_layers < n_layers:
        raise ValueError(f"prior_layers must be in 0..{n_layers - 1}, got {prior_layers}")
    for name, mode in (("prior_mode", prior_mode), ("posterior_mode", posterior_mode)):
        if mode not in ("sample", "mean"):
            raise ValueError(f"{name} must be 'sample' or 'mean', got {mode!r}")


class LatentHierarchy(nn.Module):
    """A hierarchy of L stochastic layers (z_1 nearest x) over images; see the subclasses.

    Shared verbs: :meth:`sample`, :meth:`sample_params`, :meth:`to_images`,
    :meth:`initialize`, :attr:`n_groups`, :meth:`group_layer`; the latent API:
    :meth:`encode`, :meth:`decode`, :meth:`reconstruct`, :meth:`interpolate`.
    """

    group_names: list[str]
    n_layers: int

    @property
    def n_groups(self) -> int:
        """Number of KL groups (2L - 1 for BIVA, L otherwise)."""
        return len(self.group_names)

    def group_layer(self, name: str) -> int:
        """The stochastic layer (1..L) a group belongs to, e.g. 'z3_td' -> 3."""
        return int(name[1:].split("_")[0])

    def latent_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one example's latent at ``layer`` (1..L)."""
        raise NotImplementedError

    def upgrade_state_dict(self, state: Mapping[str, T]) -> dict[str, T]:
        """``state`` (a state dict, or any dict keyed like one) with the keys of checkpoints
        written by older code renamed to the current ones (a model whose names never changed
        returns them as they are)."""
        return dict(state)

    def older_key_names(self) -> dict[str, str]:
        """{current state_dict key: its name in checkpoints of older code} for renamed keys."""
        return {}

    def legacy_parameter_names(self) -> list[str]:
        """The current parameter names in the order older code registered them: the order of
        an optimizer state it saved without parameter names."""
        return [n for n, _ in self.named_parameters()]

    def _output(self, x: Tensor, x_params: Tensor, kl: dict[str, Tensor],
                latents: dict[str, Tensor], posteriors: dict[str, DiagonalGaussian],
                n_samples: int) -> HierarchyOutput:
        """The bound of one pass from p(x|z)'s parameters (N, P, H, W) and the per-group KL
        draws (N,) (groups drawn from the prior are absent: KL 0); ``loss`` is the negative
        bound (training's objective, with free bits and a KL weight, is
        :func:`biva.objectives.training.training_loss`)."""
        log_px = self.likelihood.log_prob(x_params, repeat_batch(x, n_samples))
        zero = log_px.new_zeros(log_px.shape)
        kl_all = torch.stack([kl.get(g, zero) for g in self.group_names], dim=1)
        log_weight = log_px - kl_all.sum(1)
        loss = -log_weight.mean()
        return HierarchyOutput(loss=loss, log_weight=log_weight, log_px=log_px, kl=kl_all,
                               group_names=list(self.group_names), x_params=x_params,
                               latents=latents, posteriors=posteriors, n_samples=n_samples)

    # ----------------------------------------------------------------------------- generation
    @torch.no_grad()
    def sample(self, n: int, temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None, mode: str = "mean") -> Tensor:
        """Draw n images from the prior; (n, C, H, W) in model-input space.

        ``temperature`` scales the latent standard deviations, globally or per layer (a list
        of L values, layer 1 first). With a ``generator`` the latent noise is a function of its
        seed only, so rows are comparable across temperatures. ``mode``: "mean" shows p(x|z)'s
        mean, "sample" draws from it.
        """
        return self.to_images(self.sample_params(n, temperature, generator), mode)

    @torch.no_grad()
    def sample_params(self, n: int, temperature: float | Sequence[float] = 1.0,
                      generator: torch.Generator | None = None,
                      td_context: Sequence[Tensor | None] | None = None) -> Tensor:
        """The parameters of p(x|z) (n, P, H, W) for n prior draws (see :meth:`sample`;
        ``td_context``: class conditioning of the semi-supervised models, n rows)."""
        temps = self._temperatures(temperature)
        with seeded_eval(self, None):
            return self._generate({}, n, temps, generator, td_context)

    @torch.no_grad()
    def generate_from_top(self, z_top: Tensor, temperature: float | Sequence[float] = 1.0,
                          generator: torch.Generator | None = None,
                          td_context: Sequence[Tensor | None] | None = None) -> Tensor:
        """p(x|z) parameters (B, P, H, W) for a given top latent z_L (B, *latent_shape(L)).

        z_{<L} are drawn from the conditional priors with their standard deviations scaled by
        ``temperature`` (one value or L values, layer 1 first; the L-th is unused here; 0 gives
        the prior means). Images via :meth:`to_images`.
        """
        temps = self._temperatures(temperature)
        with seeded_eval(self, None):
            return self._generate({f"z{self.n_layers}": z_top}, z_top.shape[0], temps,
                                  generator, td_context)

    def _generate(self, given: Mapping[str, Tensor], n: int, temps: list[float],
                  generator: torch.Generator | None,
                  td_context: Sequence[Tensor | None] | None) -> Tensor:
        """The top-down pass from the ``given`` groups (whole layers, n rows each): p(x|z)'s
        parameters (n, P, H, W); every other layer drawn from its conditional prior, std scaled
        by its temperature. A subclass defines it."""
        raise NotImplementedError

    def to_images(self, x_params: Tensor, mode: str = "mean") -> Tensor:
        """Turn p(x|z) parameters into images: its mean ("mean") or a draw ("sample")."""
        if mode == "mean":
            return self.likelihood.mean(x_params)
        if mode == "sample":
            return self.likelihood.sample(x_params)
        raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")

    # ----------------------------------------------------------------------------- latents
    def encode(self, x: Tensor, mode: str = "sample") -> Encoding:
        """Every latent group's posterior q(z_g | x, z_above) for x (B, C, H, W) in model-input
        space, from one pass in eval mode without autograd: means, stds and the draws the pass
        used, (B, *group shape) each. ``mode="mean"``: each group takes its posterior mean and
        the groups below condition on it; "sample": draws (torch's global RNG, as ``forward``)."""
        with seeded_eval(self, None):
            out = self(x, posterior_mode=mode)
        groups = {g: GroupPosterior(out.posteriors[g].mu, out.posteriors[g].sigma,
                                    out.latents[g]) for g in self.group_names}
        return Encoding(groups, {g: self.group_layer(g) for g in groups})

    def decode(self, latents: Mapping[str, Tensor], *, temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None, mode: str = "mean",
               n: int | None = None) -> Decoding:
        """p(x|z) and its images from latents {group name: (B, *group shape)}, eval mode, no
        autograd. A layer is given whole or not at all; every layer not given is drawn from
        its conditional prior given the layers above, std scaled by ``temperature`` (one value
        or L, layer 1 first; 0: the prior means). With no latents, ``n`` rows are sampled."""
        given = self._check_latents(latents)
        rows = next(iter(given.values())).shape[0] if given else n
        if rows is None:
            raise ValueError("decode: no latents given; pass n, the number of images to draw")
        with seeded_eval(self, None):
            x_params = self._generate(given, rows, self._temperatures(temperature), generator,
                                      None)
        return Decoding(x_params, self.to_images(x_params, mode))

    def reconstruct(self, x: Tensor, keep: int, *, temperature: float | Sequence[float] = 1.0,
                    generator: torch.Generator | None = None, mode: str = "mean") -> Decoding:
        """x (B, C, H, W) through its top ``keep`` layers: z_>L-keep drawn from q(z|x), the
        layers below from the conditional prior at ``temperature`` (the paper's view of what
        the upper layers hold). keep = L is a reconstruction, keep = 0 a prior sample."""
        if not 0 <= keep <= self.n_layers:
            raise ValueError(f"keep: expected 0..{self.n_layers} (the number of top layers "
                             f"taken from q(z|x)), found {keep}")
        given = self.encode(x).draws(self.n_layers - keep + 1) if keep else {}
        return self.decode(given, temperature=temperature, generator=generator, mode=mode,
                           n=x.shape[0])

    def interpolate(self, x_a: Tensor, x_b: Tensor, layer: int, steps: int = 8, *,
                    others: str = "prior", mode: str = "mean") -> Decoding:
        """A straight line at one layer between the posterior means of x_a and x_b (each
        (B, C, H, W); with posterior flows, the means pushed through them); ``others``: "prior"
        takes every other layer from its conditional prior mean, "a" from x_a's code.
        Returns (B, steps, ...); step 0 is x_a's code."""
        if steps < 2:
            raise ValueError(f"steps: expected at least 2, found {steps}")
        if not 1 <= layer <= self.n_layers:
            raise ValueError(f"layer: expected 1..{self.n_layers}, found {layer}")
        if others not in ("prior", "a"):
            raise ValueError(f"others: expected 'prior' or 'a', found {others!r}")
        # The codes the decoder reads: the posterior means (pushed through the posterior
        # flows, where the model has them).
        code_a, code_b = self.encode(x_a, "mean"), self.encode(x_b, "mean")
        base = code_a.draws() if others == "a" else {}
        cols = []
        for w in torch.linspace(0, 1, steps).tolist():
            at = {g: torch.lerp(p.draw, code_b.groups[g].draw, w)
                  for g, p in code_a.of_layer(layer).items()}
            cols.append(self.decode({**base, **at}, temperature=0.0, mode=mode))
        return Decoding(torch.stack([c.x_params for c in cols], 1),
                        torch.stack([c.images for c in cols], 1))

    def _check_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The given latents, checked: known groups, whole layers, one row count, the right
        shapes; cast to the model's device and dtype."""
        unknown = sorted(set(latents) - set(self.group_names))
        if unknown:
            raise ValueError(f"latents: unknown group {unknown[0]!r}; this model's groups: "
                             f"{', '.join(self.group_names)}")
        ref = self.out_conv.v
        given, rows = {}, {t.shape[0] for t in latents.values()}
        if len(rows) > 1:
            raise ValueError(f"latents: every group needs the same number of rows, found "
                             f"{sorted(rows)}")
        for g in self.group_names:
            layer = self.group_layer(g)
            mates = [m for m in self.group_names if self.group_layer(m) == layer]
            if g not in latents:
                if any(m in latents for m in mates):
                    raise ValueError(f"latents: layer {layer} is given in part ({g} missing); "
                                     f"give all of {', '.join(mates)} or none")
                continue
            shape = tuple(latents[g].shape[1:])
            if shape != self.latent_shape(layer):
                raise ValueError(f"latents[{g!r}]: expected shape (B, "
                                 f"{', '.join(map(str, self.latent_shape(layer)))}), found "
                                 f"{tuple(latents[g].shape)}")
            given[g] = latents[g].to(ref.device, ref.dtype)
        return given

    def _temperatures(self, temperature: float | Sequence[float]) -> list[float]:
        if isinstance(temperature, (int, float)):
            return [float(temperature)] * self.n_layers
        temps = [float(t) for t in temperature]
        if len(temps) != self.n_layers:
            raise ValueError(f"temperature: expected one value or {self.n_layers} (one per "
                             f"layer), found {len(temps)}")
        return temps

    # ----------------------------------------------------------------------------- init
    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent weight-norm init on a batch x (B, C, H, W); run once before training.

        Marks the model initialized (a buffer saved in ``state_dict``), so trainers that load
        a checkpoint never run it again.
        """
        data_dependent_init(self, lambda: self(x))
        self.initialized.fill_(True)
