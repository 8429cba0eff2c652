"""What every latent hierarchy shares: its output record and the generation verbs.

:class:`LatentHierarchy` is the base of BIVA's family (:mod:`biva.models.hierarchy`) and of the
top-down residual families (:mod:`biva.models.topdown`). A subclass defines ``forward``,
``latent_shape``, ``generate_from_top``, ``group_names``, ``likelihood`` and ``out_conv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biva.nn.gaussian import DiagonalGaussian, repeat_batch
from biva.nn.weightnorm import data_dependent_init


@dataclass
class HierarchyOutput:
    """What one pass of the model returns. N = n_samples * B rows, sample-major.

    ``log_weight`` = log p(x|z) + log p(z_>k) - log q(z_>k|x): nats, (N,); its mean is the ELBO
    (k = 0) or L^{>k}. ``kl`` (N, G) holds log q - log p per latent group (one-sample Monte
    Carlo), 0 for groups drawn from the prior. ``loss`` is the training objective (scalar).
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


class LatentHierarchy(nn.Module):
    """A hierarchy of L stochastic layers (z_1 nearest x) over images; see the subclasses.

    Shared verbs: :meth:`sample`, :meth:`sample_params`, :meth:`decode`, :meth:`initialize`,
    :attr:`n_groups`, :meth:`group_layer`.
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

    def generate_from_top(self, z_top: Tensor, temperature: float | Sequence[float] = 1.0,
                          generator: torch.Generator | None = None,
                          td_context: Sequence[Tensor | None] | None = None) -> Tensor:
        """p(x|z) parameters (B, P, H, W) for a given top latent z_L (B, *latent_shape(L))."""
        raise NotImplementedError

    def _output(self, x: Tensor, x_params: Tensor, kl: dict[str, Tensor],
                latents: dict[str, Tensor], posteriors: dict[str, DiagonalGaussian],
                n_samples: int, free_bits: float, kl_weight: float) -> HierarchyOutput:
        """The bound and the loss of one pass from p(x|z)'s parameters (N, P, H, W) and the
        per-group KL draws (N,) (groups drawn from the prior are absent: KL 0)."""
        log_px = self.likelihood.log_prob(x_params, repeat_batch(x, n_samples))
        zero = log_px.new_zeros(log_px.shape)
        kl_all = torch.stack([kl.get(g, zero) for g in self.group_names], dim=1)
        log_weight = log_px - kl_all.sum(1)
        kl_train = kl_all.clamp_min(free_bits) if free_bits > 0 else kl_all
        loss = -(log_px - kl_weight * kl_train.sum(1)).mean()
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
        return self.decode(self.sample_params(n, temperature, generator), mode)

    @torch.no_grad()
    def sample_params(self, n: int, temperature: float | Sequence[float] = 1.0,
                      generator: torch.Generator | None = None,
                      td_context: Sequence[Tensor | None] | None = None) -> Tensor:
        """The parameters of p(x|z) for n prior draws (see :meth:`sample`; ``td_context``:
        class conditioning of the semi-supervised models, n rows)."""
        temps = self._temperatures(temperature)
        device, dtype = self.out_conv.v.device, self.out_conv.v.dtype
        # z_L's noise is drawn before the lower layers' so a generator gives the same images
        # as before generate_from_top existed.
        z_top = temps[-1] * torch.randn((n, *self.latent_shape(self.n_layers)),
                                        generator=generator, device=device, dtype=dtype)
        return self.generate_from_top(z_top, temps, generator, td_context=td_context)

    def decode(self, x_params: Tensor, mode: str = "mean") -> Tensor:
        """Turn p(x|z) parameters into images: its mean ("mean") or a draw ("sample")."""
        if mode == "mean":
            return self.likelihood.mean(x_params)
        if mode == "sample":
            return self.likelihood.sample(x_params)
        raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")

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
