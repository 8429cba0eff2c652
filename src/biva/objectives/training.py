"""The training objective of the image hierarchies: the negative ELBO of one pass with free
bits (a floor on each latent group's KL, Kingma et al. 2016) and a KL weight (the warm-up).

A model's ``forward`` gives the bound's terms (:class:`biva.models.HierarchyOutput`: log p(x|z)
and the KL of every group, nats); what training does with them lives here. The
semi-supervised model's eq. 20 objective is its own ``loss`` (its free bits enter inside the
sum over classes), and the text models' is in :mod:`biva.models.text`.
"""

from __future__ import annotations

from torch import Tensor

from biva.models import HierarchyOutput


def training_loss(out: HierarchyOutput, *, free_bits: float = 0.0,
                  kl_weight: float | Tensor = 1.0) -> Tensor:
    """``-(log p(x|z) - kl_weight * sum_g max(KL_g, free_bits))`` averaged over the pass's N
    rows: a scalar in nats. ``free_bits`` (lambda, nats per group and example) and
    ``kl_weight`` at 0 and 1 give the negative ELBO, ``out.loss``."""
    kl = out.kl.clamp_min(free_bits) if free_bits > 0 else out.kl
    return -(out.log_px - kl_weight * kl.sum(1)).mean()
