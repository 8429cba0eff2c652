"""The semi-supervised BIVA's bound against brute force, and its classifier's gradient from
the unlabelled term (eq. 19), on the tiny hierarchy of ``test_bound_exact.py``."""

from __future__ import annotations

import pytest
import torch
from brute_force import (
    brute_force_log_px,
    iw_log_px,
    semi_supervised_untrained,
    with_trained_weights,
)

from biva.objectives.training import semi_supervised_loss


@pytest.fixture(scope="module", params=["balanced", "paper"])
def semi_supervised(request):
    """Trained on unlabelled toy images (:func:`brute_force.train_semi_supervised`, committed
    weights); "paper" adds y to q(z_L | x, y) (eq. 15)."""
    return with_trained_weights(f"semi_supervised_{request.param}",
                        semi_supervised_untrained(request.param))


@pytest.mark.slow
def test_semi_supervised_weight_is_unbiased_for_the_brute_force_marginal(semi_supervised,
                                                                         images):
    """logsumexp_y L(x, y) estimates p(x) = sum_y p(y) p(x | y); brute force with y ~ p(y)."""
    exact, se_exact = brute_force_log_px(semi_supervised, images)
    est, se = iw_log_px(semi_supervised, images, 0)
    tol = 4 * torch.sqrt(se**2 + se_exact**2) + 0.01
    assert ((est - exact).abs() < tol).all(), (est.tolist(), exact.tolist())


def test_classifier_gets_gradient_from_the_unlabelled_term(semi_supervised, images):
    """U = -sum_y q(y|x) (L(x, y) - log q(y|x)) trains q(y|x) on unlabelled data (eq. 19)."""
    model = semi_supervised.train()
    try:
        torch.manual_seed(0)
        out = model(images, labels=torch.full((4,), -1))
        g_logits, = torch.autograd.grad(out.loss, out.logits, retain_graph=True)
        # By hand: the same U with L(x, y) held fixed, differentiated w.r.t. the logits.
        lq = torch.log_softmax(out.logits.float(), 1)
        w_u = model.loss_weights[1]   # 1, or N_u / N under the "paper" objective
        u = -w_u * (lq.exp() * (out.class_bounds.detach() - lq)).sum(1).mean()
        want, = torch.autograd.grad(u, out.logits, retain_graph=True)
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(g_logits, want, rtol=1e-4, atol=1e-6)
        # Training's objective (here without free bits) trains q(y|x) the same way.
        g_train, = torch.autograd.grad(semi_supervised_loss(model, out), out.logits,
                                       retain_graph=True)
        torch.testing.assert_close(g_train, want, rtol=1e-4, atol=1e-6)
        model.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in model.classifier.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) > 0 for g in grads) > 0.9 * len(grads)
    finally:
        model.eval()
