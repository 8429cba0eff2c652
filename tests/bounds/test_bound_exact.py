"""The bounds of ``HierarchicalVAE`` itself against brute force, and the training objective
against hand computations.
against hand computations.

A tiny hierarchy (L = 3 dense layers) over 4x4 binary images is trained for a few hundred steps
so that q differs from p and p(x|z) depends on every layer. Its marginal log p(x) is then
computed by brute force, independently of ``forward``: ancestral samples z ~ p(z) through
``sample_params`` and ``log p(x) = log mean_z p(x|z)``. Every importance weight that
``forward`` returns, for every ``prior_layers = k``, is an unbiased estimate of p(x)
(eq. 2 and the auxiliary-variable argument in ``HierarchicalVAE.forward``), so its log-mean
over many samples must agree with the brute-force value. Any missing or extra term in a
weight moves that expectation:

* a KL group dropped from the bound (e.g. the z^BU groups of BIVA);
* L^{>k} with z_<=k set to the prior means instead of drawn, or z^BU_<=k taken from q
  rather than from p in the generative model;
* rows of x repeated example-major where the samples are sample-major (log p(x|z) of
  another image);
* a constant dropped from the log-density of the top prior or of the likelihood.

The models, data and brute-force marginals: ``tests/brute_force.py``; the fixtures:
``tests/bounds/conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
from brute_force import (
    DENSE_MODELS,
    K,
    brute_force_log_px,
    check_sensitive,
    check_unbiased,
    iw_log_px,
    tiny_config,
    toy_data,
)

from biva.models.semi_supervised import SemiSupervisedBIVA
from biva.objectives.training import training_loss


@pytest.mark.slow
@pytest.mark.parametrize("variant", DENSE_MODELS)
def test_every_importance_weight_is_unbiased_for_the_brute_force_marginal(trained, images,
                                                                          exact_log_px, variant):
    check_unbiased(trained[variant], images, *exact_log_px(variant), variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", DENSE_MODELS)
def test_model_is_sensitive_enough_for_the_brute_force_test(trained, images, exact_log_px,
                                                            variant):
    check_sensitive(trained[variant], images, exact_log_px(variant)[0])


def test_l_greater_k_draws_the_lower_layers_from_the_conditional_prior(trained, images):
    """L^{>k}: z_<=k are draws of p(z_<=k | z_>k) (they vary with fixed z_>k), never q's."""
    model = trained["biva"]
    torch.manual_seed(0)
    out = model(images, n_samples=64, prior_layers=1)
    assert set(out.latents) >= {"z1_bu", "z1_td"}
    # z_>1 come from q: their groups have a KL; z_1's groups are drawn from p: KL 0.
    names = model.group_names
    kl = out.kl_per_group
    assert (kl[:, names.index("z1_bu")] == 0).all() and (kl[:, names.index("z1_td")] == 0).all()
    assert (kl[:, names.index("z2_bu")] != 0).all()
    # The BU draw of q for z1 is not what the generative model used.
    torch.manual_seed(0)
    q_out = model(images, n_samples=64, prior_layers=0)
    assert not torch.allclose(out.latents["z1_bu"], q_out.latents["z1_bu"])
    # Drawn, not the mean: the spread over samples matches the prior's std.
    z = out.latents["z1_td"].view(64, 4, -1)
    assert (z.std(0) > 1e-2).all()


def test_free_bits_apply_per_group_and_example(trained, images):
    """training_loss = -mean_n [log p(x_n|z) - sum_g max(KL_{n,g}, lambda)], checked by hand;
    the pass itself (its KL and log p(x|z)) does not depend on the objective."""
    model = trained["biva"]
    x = images.repeat(8, 1, 1, 1)
    torch.manual_seed(5)
    out = model(x)
    kl = out.kl.detach()
    torch.testing.assert_close(training_loss(out), out.loss)   # lambda 0, weight 1: -ELBO
    torch.testing.assert_close(out.loss, -out.elbo.mean())
    lam = float(kl.median())
    # The hand computations below differ only if some (row, group) entries lie on each side
    # of lambda and the total / batch-mean KL would clamp differently.
    assert (kl < lam).any() and (kl > lam).any()
    torch.manual_seed(5)
    fb = model(x)
    torch.testing.assert_close(fb.kl, out.kl)
    per_group = -(out.log_px - kl.clamp_min(lam).sum(1)).mean()
    torch.testing.assert_close(training_loss(fb, free_bits=lam), per_group)
    log_px = out.log_px.detach()
    wrong = {
        "total KL": -(log_px - kl.sum(1).clamp_min(lam)).mean(),
        "batch-mean KL": -(log_px.mean() - kl.mean(0).clamp_min(lam).sum()),
    }
    for name, value in wrong.items():
        assert abs(float(value) - float(per_group.detach())) > 1e-3, f"{name} gives the same loss"
    # kl_weight scales the clamped KL only.
    torch.testing.assert_close(training_loss(out, free_bits=lam, kl_weight=0.5),
                               -(out.log_px - 0.5 * kl.clamp_min(lam).sum(1)).mean())


def test_log_px_of_each_row_scores_its_own_image(trained, images):
    """With n_samples > 1, row s*B + b of log p(x|z) belongs to image b (sample-major)."""
    model = trained["lvae"]
    torch.manual_seed(0)
    out = model(images, n_samples=3)
    x_rows = images.repeat(3, 1, 1, 1)
    torch.testing.assert_close(out.log_px, model.likelihood.log_prob(out.x_params, x_rows))
    # The same rows scored against example-major images differ: the check is not vacuous.
    wrong = images.repeat_interleave(3, 0)
    assert not torch.allclose(out.log_px, model.likelihood.log_prob(out.x_params, wrong))


# ------------------------------------------------------------------- semi-supervised

@pytest.fixture(scope="module", params=["balanced", "paper"])
def semi_supervised(request):
    """Trained on unlabelled toy images; "paper" adds y to q(z_L | x, y) (eq. 15)."""
    torch.manual_seed(2)
    model = SemiSupervisedBIVA(tiny_config("biva"), 3, alpha=1.0, objective=request.param,
                               n_labelled=1, n_unlabelled=511)
    data = toy_data(512, seed=3)
    model.initialize(data[:128])
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    for step in range(60):
        x = data[(step * 32) % 512:(step * 32) % 512 + 32]
        loss = model(x, free_bits=2.0).loss   # unlabelled: every class summed
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


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
        model.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in model.classifier.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) > 0 for g in grads) > 0.9 * len(grads)
    finally:
        model.eval()


# ------------------------------------------------------------------- anomaly scores

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["biva", "lvae"])
def test_shared_bottom_up_sweep_is_unbiased_for_every_k(trained, images, exact_log_px,
                                                        variant):
    """bound_sweep shares one BU pass across k: each L^{>k} stays an unbiased p(x) estimate."""
    from biva.ood.scores import bound_sweep

    model = trained[variant]
    exact, se_exact = exact_log_px(variant)
    torch.manual_seed(9)
    ks = list(range(model.n_layers))
    sweep = bound_sweep(model, images, ks, scores=("lk",), n_samples=K, max_batch=4 * 4096)
    for k in ks:
        est = sweep.bounds[("sample", k)]
        assert ((est - exact).abs() < 4 * se_exact + 0.25).all(), (k, est.tolist(), exact)
    # The ratio is the difference of the two bounds on the same images and draws.
    torch.testing.assert_close(sweep.value("llr", 2), sweep.bounds[("sample", 0)]
                               - sweep.bounds[("sample", 2)])
    assert (sweep.anomaly("llr", 2) == sweep.value("llr", 2)).all()
    assert (sweep.anomaly("lk", 2) == -sweep.bounds[("sample", 2)]).all()


def test_mean_variant_sets_the_lower_layers_to_the_prior_means(trained, images):
    """prior_mode="mean", k = L - 1: given z_L, p(x|z) is the all-means decoding of z_L,
    computed independently by generate_from_top at temperature 0."""
    model = trained["biva"]
    L = model.n_layers
    torch.manual_seed(0)
    out = model(images, n_samples=5, prior_layers=L - 1, prior_mode="mean")
    want = model.generate_from_top(out.latents[f"z{L}"], temperature=0.0)
    torch.testing.assert_close(out.x_params, want)
    torch.manual_seed(0)
    drawn = model(images, n_samples=5, prior_layers=L - 1)
    assert not torch.allclose(drawn.x_params, want)
    with pytest.raises(ValueError, match="prior_mode"):
        model(images, prior_mode="median")
