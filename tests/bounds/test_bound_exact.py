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
``tests/bounds/conftest.py``. This file holds BIVA's checks and the objective's; the same
checks on the ladders and on the semi-supervised BIVA have files of their own.
"""

from __future__ import annotations

import pytest
import torch
from brute_force import check_sensitive, check_sweep_unbiased, check_unbiased

from biva.objectives.training import training_loss

#: BIVA with separate and shared conditional priors; the ladders (VAE, LVAE, LVAE+) are in
#: test_bound_exact_ladders.py and the semi-supervised BIVA in
#: test_bound_exact_semi_supervised.py, so that the three run on different pytest-xdist
#: workers (files stay whole).
BIVA_MODELS = ("biva", "biva_shared")


@pytest.mark.slow
@pytest.mark.parametrize("variant", BIVA_MODELS)
def test_every_importance_weight_is_unbiased_for_the_brute_force_marginal(trained, images,
                                                                          exact_log_px, variant):
    check_unbiased(trained[variant], images, *exact_log_px(variant), variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", BIVA_MODELS)
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


# ------------------------------------------------------------------- anomaly scores

@pytest.mark.slow
def test_shared_bottom_up_sweep_is_unbiased_for_every_k(trained, images, exact_log_px):
    """bound_sweep shares one BU pass across k: each L^{>k} stays an unbiased p(x) estimate
    (BIVA here; an LVAE in test_bound_exact_ladders.py)."""
    check_sweep_unbiased(trained["biva"], images, *exact_log_px("biva"))


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
