"""The training objective of the image hierarchies: the negative ELBO of one pass with free
bits (a floor on each latent group's KL, Kingma et al. 2016) and a KL weight (the warm-up).

A model's ``forward`` gives the bound's terms (:class:`biva.models.HierarchyOutput`: log p(x|z)
and the KL of every group, nats); what training does with them lives here: the negative ELBO
of the unsupervised hierarchies (:func:`training_loss`) and eq. 20 of the semi-supervised one
(:func:`semi_supervised_loss`, whose free bits enter inside the sum over classes). The text
models' objective is in :mod:`biva.models.text`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from biva.models import HierarchyOutput, SemiSupervisedBIVA
from biva.models.semi_supervised import SemiSupervisedOutput


def training_loss(out: HierarchyOutput, *, free_bits: float = 0.0,
                  kl_weight: float | Tensor = 1.0) -> Tensor:
    """``-(log p(x|z) - kl_weight * sum_g max(KL_g, free_bits))`` averaged over the pass's N
    rows: a scalar in nats. ``free_bits`` (lambda, nats per group and example) and
    ``kl_weight`` at 0 and 1 give the negative ELBO, ``out.loss``."""
    kl = out.kl.clamp_min(free_bits) if free_bits > 0 else out.kl
    return -(out.log_px - kl_weight * kl.sum(1)).mean()


def semi_supervised_loss(model: SemiSupervisedBIVA, out: SemiSupervisedOutput, *,
                         free_bits: float = 0.0, kl_weight: float | Tensor = 1.0,
                         alpha: float | None = None) -> Tensor:
    """Eq. 20 of one pass ``out`` of ``model`` as training minimizes it: a scalar in nats.

    ``w_l * mean_labelled(-L(x, y) + alpha * CE) - w_u * mean_unlabelled(sum_y q(y|x)
    (L(x, y) - log q(y|x)))``, each L(x, y) = log p(x|z, y) + log p(y) - ``kl_weight`` *
    sum_g max(KL_g, ``free_bits``) (for the unlabelled rows inside the sum over classes).
    (w_l, w_u) = ``model.loss_weights``; ``alpha`` None: ``model.alpha``. The "supervised"
    objective: the labelled rows' mean cross-entropy. At ``free_bits`` 0 and ``kl_weight`` 1
    this is ``out.loss``.
    """
    if model.objective == "supervised":   # the cross-entropy alone: no bound in it
        return out.loss
    lab = out.labels
    li, ui = torch.nonzero(lab >= 0).flatten(), torch.nonzero(lab < 0).flatten()
    log_py = -math.log(model.num_classes)

    def bound(log_px: Tensor, kl: Tensor) -> Tensor:   # L(x, y) with free bits and KL weight
        kl = kl.clamp_min(free_bits) if free_bits > 0 else kl
        return log_px + log_py - kl_weight * kl.sum(-1)

    loss = out.log_px.new_zeros(())
    w_l, w_u = model.loss_weights
    if li.numel():
        weight = model.alpha if alpha is None else alpha
        loss = loss + w_l * (-bound(out.log_px[li], out.kl[li]) + weight * out.ce[li]).mean()
    if ui.numel():
        lq = F.log_softmax(out.logits.float(), dim=1)[ui]
        u = (lq.exp() * (bound(out.class_log_px, out.class_kl) - lq)).sum(1).mean()
        loss = loss - w_u * u
    return loss
