import math

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
@pytest.mark.slow
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


def test_gaussian_mean_and_samples_follow_its_parameters():
    """mean() is mu; sample() draws N(mu, sigma^2) per dimension (moments over 20,000 draws),
    learned or fixed sigma."""
    mu, raw = torch.tensor([-0.5, 2.0]).view(1, 2, 1, 1), torch.tensor([0.3, -1.0])
    params = torch.cat([mu, raw.view(1, 2, 1, 1)], 1)
    for lik, p in [(Gaussian(), params), (Gaussian(fixed_std=0.3), mu)]:
        sigma = lik.dist(p).sigma.view(2)
        torch.testing.assert_close(lik.mean(p), mu)
        torch.manual_seed(0)
        draws = lik.sample(p.expand(20_000, -1, -1, -1)).view(-1, 2)
        torch.testing.assert_close(draws.mean(0), mu.view(2), atol=0.05, rtol=0)
        torch.testing.assert_close(draws.std(0), sigma, atol=0.02, rtol=0)


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


def _all_values(channels: int, bits: int) -> torch.Tensor:
    """Every joint value of one pixel's channels: (2**(bits*C), C, 1, 1), first channel slowest."""
    levels = torch.linspace(-1, 1, 2**bits)
    grid = torch.cartesian_prod(*([levels] * channels)) if channels > 1 else levels[:, None]
    return grid.view(-1, channels, 1, 1)


def _assert_sample_frequencies_match_log_prob(lik, params, channels: int, n: int) -> None:
    """Over every joint value of one 2-bit pixel of ``channels`` channels: exp(log_prob) sums
    to 1, and the frequencies of n seeded draws from ``params`` (1, P, 1, 1) match it."""
    values = _all_values(channels, 2)
    p = lik.log_prob(params.expand(len(values), -1, -1, -1), values).double().exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(0)
    draws = lik.sample(params.expand(n, -1, -1, -1)).view(n, channels)
    index = ((draws + 1) / 2 * 3).round().long()                   # level 0..3 per channel
    code = sum(index[:, j] * 4 ** (channels - 1 - j) for j in range(channels))  # as _all_values
    freq = torch.bincount(code, minlength=4**channels).double() / n
    # Binomial standard error sqrt(p(1-p)/n) <= 0.0011: 5 s.e. plus a small slack.
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / n).sqrt().max() + 1e-3


def test_logistic_mixture_samples_follow_its_probabilities():
    """sample() and log_prob() are separate code (Gumbel pick, logistic noise, R -> G -> B
    coupling, quantization): the sample frequencies of all 64 joint values must match
    exp(log_prob) -- including the channel coupling, which leaves the sum to 1 unchanged."""
    # Three components: with two, a reversed Gumbel (logits - G) picks with the same
    # probabilities (the difference of two Gumbels is symmetric), with three it does not.
    lik = DiscretizedLogisticMixture(n_mix=3, bits=2)
    g = torch.Generator().manual_seed(3)
    params = torch.randn(1, lik.param_channels(3), 1, 1, generator=g)
    params[:, :3] = torch.tensor([1.5, -0.4, 0.3]).view(1, 3, 1, 1)   # mixture logits
    params[:, 3:12] *= 0.5                                            # means
    params[:, 12:21] = -1.0                                           # log-scales
    params[:, 21:] = 1.5 * params[:, 21:].sign()                      # strong coupling
    _assert_sample_frequencies_match_log_prob(lik, params, 3, n=200_000)
    # The greedy "mean": the most likely component's mean, coupled and quantized.
    mean = lik.mean(params).view(3)
    logits, means, _, coeffs = lik._split(params, 3)
    k = int(logits.view(3).argmax())
    mu, cf = means[0, k, :, 0, 0], coeffs[0, k, :, 0, 0]
    r = lik.quantize(mu[0].clamp(-1, 1))
    gch = lik.quantize((mu[1] + cf[0] * r).clamp(-1, 1))
    b = lik.quantize((mu[2] + cf[1] * r + cf[2] * gch).clamp(-1, 1))
    torch.testing.assert_close(mean, torch.stack([r, gch, b]))


@pytest.mark.parametrize("channels", [1, 2])
def test_logistic_mixture_samples_follow_its_probabilities_on_one_and_two_channels(channels):
    """As above for grayscale and two-channel data: sample() finds C from the parameter count,
    and with C = 2 the second channel's mean is coupled to the first."""
    lik = DiscretizedLogisticMixture(n_mix=3, bits=2)
    c, n_coef = channels, channels * (channels - 1) // 2
    g = torch.Generator().manual_seed(5)
    logits = torch.tensor([1.5, -0.4, 0.3])
    means = 0.5 * torch.randn(3 * c, generator=g)
    coeffs = 1.5 * torch.randn(3 * n_coef, generator=g).sign()
    params = torch.cat([logits, means, torch.full((3 * c,), -1.0), coeffs]).view(1, -1, 1, 1)
    assert params.shape[1] == lik.param_channels(c)
    _assert_sample_frequencies_match_log_prob(lik, params, c, n=100_000)
    assert lik.mean(params).shape == (1, c, 1, 1)


def test_logistic_mixture_refuses_parameter_counts_of_no_channel_count():
    """params must hold n_mix * (C + 1)(C + 2) / 2 maps for some C >= 1 (3, 6, 10, ... per
    component); logits alone (C = 0) or a count between two channel counts are refused."""
    lik = DiscretizedLogisticMixture(n_mix=10)
    assert [lik._channels(torch.zeros(1, lik.param_channels(c), 1, 1)) for c in (1, 3, 20)] \
        == [1, 3, 20]
    for bad in (10, 105, 64):
        with pytest.raises(ValueError, match=f"{bad} parameter channels fit no channel count"):
            lik.sample(torch.zeros(1, bad, 2, 2))


def test_logistic_mixture_tail_bins_use_density_times_bin_width():
    """Where the bin mass underflows float32 (< 1e-5), log p = log(pdf(centre) * 2h), with the
    logistic pdf exp(-t) / (s (1 + exp(-t))^2), t = (x - mu) / s, computed here in float64."""
    lik = DiscretizedLogisticMixture(n_mix=1, bits=8)
    mu, log_s = 0.1, -7.0
    params = torch.tensor([0.0, mu, log_s]).view(1, 3, 1, 1)
    x = torch.full((1, 1, 1, 1), lik.quantize(torch.tensor(0.16)).item())   # ~60 scales away
    s = math.exp(log_s)
    t = (x.item() - mu) / s
    h = lik.half_bin
    mass = 1 / (1 + math.exp(-(t + h / s))) - 1 / (1 + math.exp(-(t - h / s)))
    assert mass < 1e-5                                    # the fallback branch is taken
    want = -t - log_s - 2 * math.log1p(math.exp(-t)) + math.log(2 * h)
    assert lik.log_prob(params, x).item() == pytest.approx(want, abs=1e-3)
    # In the body the exact bin mass is used.
    x2 = torch.full((1, 1, 1, 1), lik.quantize(torch.tensor(mu)).item())
    t2 = (x2.item() - mu) / s
    exact = math.log(1 / (1 + math.exp(-(t2 + h / s))) - 1 / (1 + math.exp(-(t2 - h / s))))
    assert lik.log_prob(params, x2).item() == pytest.approx(exact, abs=1e-4)


def test_logistic_mixture_and_gaussian_settings():
    for bits in (1, 16):
        assert DiscretizedLogisticMixture(bits=bits).bits == bits
    for kw, msg in (({"bits": 0}, "bits must be in 1..16, got 0"),
                    ({"bits": 17}, "bits must be in 1..16, got 17"),
                    ({"n_mix": 0}, "n_mix must be >= 1, got 0")):
        with pytest.raises(ValueError, match=msg):
            DiscretizedLogisticMixture(**kw)
    default = DiscretizedLogisticMixture()
    assert (default.n_mix, default.bits) == (10, 8)
    assert default.param_channels(3) == 10 * (1 + 6 + 3)
    assert Gaussian().param_channels(3) == 6 and Gaussian(fixed_std=0.5).param_channels(3) == 3
    # Three data channels: mu and the raw std are the two halves of the 6 parameter maps.
    params = torch.randn(2, 6, 2, 2)
    d = Gaussian().dist(params)
    torch.testing.assert_close(d.mu, params[:, :3])
    assert d.sigma.shape == (2, 3, 2, 2)
    # The std floor: a very negative raw value gives sigma = min_std (1e-3 by default).
    floor = Gaussian().dist(torch.cat([torch.zeros(1, 1, 1, 1),
                                       torch.full((1, 1, 1, 1), -1e4)], 1)).sigma
    assert floor.item() == pytest.approx(1e-3, rel=1e-3)


def test_categorical_over_several_channels_without_padding():
    """C = 2 channels of 5 classes on a 3x3 map: each channel's softmax is its own block of
    K parameter maps (B, K*C, H, W) viewed as (B, K, C, H, W)."""
    lik = Categorical(num_classes=5)
    g = torch.Generator().manual_seed(4)
    params = torch.randn(3, 10, 3, 3, generator=g)
    x = torch.randint(0, 5, (3, 2, 3, 3), generator=g)
    logits = params.view(3, 5, 2, 3, 3)
    ce = F.cross_entropy(logits, x, reduction="none")          # (3, 2, 3, 3)
    torch.testing.assert_close(lik.log_prob(params, x), -ce.flatten(1).sum(1))
    draw = lik.sample(params)
    assert draw.shape == (3, 2, 3, 3) and draw.dtype == torch.float32
    assert lik.param_channels(2) == 10


def test_categorical_over_several_channels_with_padding_and_its_mean():
    """As above with padding (class 0) in some positions of some rows: each row sums its own
    unpadded positions; mean() is the most likely class of each position and channel."""
    padded = Categorical(num_classes=5, ignore_index=0)
    g = torch.Generator().manual_seed(4)
    params = torch.randn(3, 10, 3, 3, generator=g)
    x = torch.randint(0, 5, (3, 2, 3, 3), generator=g)
    logits = params.view(3, 5, 2, 3, 3)
    ce = F.cross_entropy(logits, x, reduction="none", ignore_index=0)
    assert (x == 0).any() and (x != 0).any()
    torch.testing.assert_close(padded.log_prob(params, x), -ce.flatten(1).sum(1))
    torch.testing.assert_close(padded.mean(params), logits.argmax(1).float())


def test_build_likelihood_defaults_are_the_model_configs():
    """A likelihood built by name alone is the one a default ModelConfig builds."""
    from biva import ModelConfig
    from biva.likelihoods import build_likelihood

    cfg = ModelConfig()
    logistic = build_likelihood("discretized_logistic")
    assert (logistic.n_mix, logistic.bits) == (cfg.n_mix, cfg.bits)
    assert build_likelihood("categorical").num_classes == cfg.num_classes
    assert build_likelihood("gaussian").fixed_std == cfg.likelihood_std
