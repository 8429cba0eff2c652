import pytest
import torch
import torch.nn.functional as F

from biva.likelihoods import Bernoulli, Categorical, DiscretizedLogisticMixture, Gaussian


def test_bernoulli_matches_bce_with_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 4, 4, generator=g) * 3
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4), generator=g)
    ref = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), ref)


@pytest.mark.parametrize("channels,bits,n_mix", [(1, 8, 3), (3, 8, 2), (3, 3, 4), (1, 1, 1)])
def test_discretized_logistic_mixture_sums_to_one(channels, bits, n_mix):
    # Sum p(x) over every joint value of one pixel's channels: all 2**(bits*C) bins.
    lik = DiscretizedLogisticMixture(n_mix=n_mix, bits=bits)
    g = torch.Generator().manual_seed(1)
    params = torch.randn(1, lik.param_channels(channels), 1, 1, generator=g)
    params[:, n_mix: n_mix * (1 + channels)] *= 0.6    # means mostly inside [-1, 1]
    levels = torch.linspace(-1, 1, 2**bits)
    rest = torch.cartesian_prod(*([levels] * (channels - 1))) if channels > 1 else None
    if rest is not None and rest.dim() == 1:
        rest = rest.unsqueeze(1)
    total = 0.0
    for first in levels if channels > 1 else [None]:
        if channels == 1:
            xs = levels.view(-1, 1, 1, 1)
        else:
            xs = torch.cat([torch.full((rest.shape[0], 1), first.item()), rest], 1)
            xs = xs.view(-1, channels, 1, 1)
        lp = lik.log_prob(params.expand(xs.shape[0], -1, -1, -1), xs)
        total += lp.double().exp().sum().item()
    assert total == pytest.approx(1.0, rel=1e-4)


def test_logistic_mixture_sample_and_mean_are_on_the_grid():
    lik = DiscretizedLogisticMixture(n_mix=5, bits=5)
    params = torch.randn(2, lik.param_channels(3), 4, 4)
    for x in (lik.sample(params), lik.mean(params)):
        assert x.shape == (2, 3, 4, 4) and x.min() >= -1 and x.max() <= 1
        level = (x + 1) / 2 * 31
        torch.testing.assert_close(level, level.round(), atol=1e-4, rtol=0)


def test_logistic_mixture_is_sharper_where_the_data_is():
    lik = DiscretizedLogisticMixture(n_mix=1, bits=8)
    x = torch.full((1, 1, 2, 2), 0.2)
    good = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.2),
                      torch.full((1, 1, 2, 2), -5.0)], 1)
    bad = good.clone()
    bad[:, 1] = -0.5
    assert lik.log_prob(good, x) > lik.log_prob(bad, x)


def test_gaussian_log_prob_matches_torch_distributions():
    params = torch.randn(3, 4, 2, 2)
    x = torch.randn(3, 2, 2, 2)
    lik = Gaussian()
    d = lik.dist(params)
    ref = torch.distributions.Normal(d.mu, d.sigma).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(lik.log_prob(params, x), ref)
    fixed = Gaussian(fixed_std=0.3)
    assert fixed.param_channels(2) == 2
    ref = torch.distributions.Normal(params[:, :2], 0.3).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(fixed.log_prob(params[:, :2], x), ref)


def test_categorical_matches_cross_entropy_and_ignores_padding():
    lik = Categorical(num_classes=7, ignore_index=0)
    params = torch.randn(2, 7, 5)        # a token sequence: (B, K, T)
    x = torch.randint(1, 7, (2, 1, 5))
    x[1, 0, 3:] = 0
    ce = F.cross_entropy(params, x[:, 0], reduction="none", ignore_index=0)
    torch.testing.assert_close(lik.log_prob(params, x), -ce.sum(1))
    assert lik.sample(params).shape == (2, 1, 5)


def test_latent_log_densities_match_torch_distributions():
    """DiagonalGaussian.log_prob and standard_normal_log_prob, every constant included."""
    from biva.nn.gaussian import DiagonalGaussian, standard_normal_log_prob

    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 3, 2, 2), torch.rand(5, 3, 2, 2) + 0.1
    z = torch.randn(5, 3, 2, 2)
    ref = torch.distributions.Normal(mu, sigma).log_prob(z).sum((1, 2, 3))
    torch.testing.assert_close(DiagonalGaussian(mu, sigma).log_prob(z), ref)
    ref0 = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((1, 2, 3))
    torch.testing.assert_close(standard_normal_log_prob(z), ref0)
