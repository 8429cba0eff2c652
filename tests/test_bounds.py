import math

import pytest
import torch

from biva import HierarchicalVAE, LinearGaussianHierarchy, importance_weighted_bound, preset
from biva.objectives import (
    bits_per_dim,
    effective_sample_size,
    log_weights,
    nats_from_bits_per_dim,
)


def test_exact_posterior_gives_log_px_with_every_sample():
    torch.manual_seed(0)
    m = LinearGaussianHierarchy((5, 3, 2), exact_posterior=True)
    x = m.sample_data(64, seed=3)
    lw = m(x, n_samples=4).log_weight.view(4, -1)
    torch.testing.assert_close(lw, m.log_marginal(x).expand(4, -1))


def test_iw_bound_rises_with_k_towards_log_px():
    torch.manual_seed(0)
    m = LinearGaussianHierarchy((6, 4, 2), seed=1)
    x = m.sample_data(32, seed=3)
    log_px = m.log_marginal(x).mean().item()
    bounds = {k: importance_weighted_bound(m, x, k).mean().item() for k in (1, 10, 100, 5000)}
    assert bounds[1] < bounds[10] < bounds[100] < bounds[5000] <= log_px + 1e-3
    assert log_px - bounds[5000] < 0.25 * (log_px - bounds[1])


def test_l_greater_k_is_a_lower_bound_on_the_exact_marginal():
    torch.manual_seed(0)
    m = LinearGaussianHierarchy((6, 4, 3, 2), seed=2, exact_posterior=True)
    x = m.sample_data(16, seed=3)
    log_px = m.log_marginal(x)
    for k in range(m.L):
        lw = m(x, n_samples=2000, prior_layers=k).log_weight.view(2000, -1)
        mean, se = lw.mean(0), lw.std(0) / math.sqrt(2000)
        assert torch.all(mean <= log_px + 4 * se + 1e-9), k
        if k > 0:  # the prior replaces the exact posterior below k: strictly looser on average
            assert (log_px - mean).mean() > 0.1


def test_chunked_logsumexp_equals_the_direct_one():
    class Fixed(torch.nn.Module):
        """Log-weights that depend only on the call count, to compare chunkings exactly."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, n_samples=1, prior_layers=0):
            start = self.calls
            self.calls += n_samples
            s = torch.arange(start, start + n_samples, dtype=torch.float64)
            lw = (torch.sin(s)[:, None] * 30 + x[None, :, 0]).reshape(-1)
            return type("O", (), {"log_weight": lw})()

    x = torch.randn(3, 1, dtype=torch.float64)
    direct = torch.logsumexp(torch.sin(torch.arange(1000.0, dtype=torch.float64))[:, None] * 30
                             + x[None, :, 0], 0) - math.log(1000)
    for max_batch in (3, 30, 3 * 7, 10**6):
        got = importance_weighted_bound(Fixed(), x, 1000, max_batch=max_batch)
        torch.testing.assert_close(got, direct)


@pytest.mark.parametrize("variant", ["vae", "lvae", "lvae+", "biva"])
def test_l_greater_zero_is_the_elbo_estimator_on_the_same_samples(variant):
    model = HierarchicalVAE(preset("digits", variant=variant)).eval()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    model.initialize(x)
    torch.manual_seed(5)
    l0 = importance_weighted_bound(model, x, 1, prior_layers=0)
    torch.manual_seed(5)
    out = model(x)
    torch.testing.assert_close(l0, out.elbo.double())
    torch.testing.assert_close(out.elbo, out.log_px - out.kl.sum(1))


@pytest.mark.parametrize("variant", ["lvae", "biva"])
def test_real_model_bounds_are_ordered_and_finite(variant):
    torch.manual_seed(0)
    model = HierarchicalVAE(preset("digits", variant=variant))
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.3))
    model.initialize(x)
    l1 = importance_weighted_bound(model, x, 200, max_batch=8).mean()
    l200 = importance_weighted_bound(model, x, 200, max_batch=400).mean()
    elbo = torch.stack([model.eval()(x).elbo for _ in range(50)]).mean()
    assert torch.isfinite(l200) and l200 > elbo
    assert l1 == pytest.approx(l200.item(), abs=0.5)   # chunking changes only the noise
    lw = log_weights(model, x, 64)
    ess = effective_sample_size(lw)
    assert lw.shape == (64, 8) and torch.all((ess >= 1) & (ess <= 64 + 1e-6))
    for k in range(1, model.n_layers):
        assert torch.isfinite(importance_weighted_bound(model, x, 4, prior_layers=k)).all()


def test_bits_per_dim():
    assert bits_per_dim(-math.log(2) * 3072 * 3.0, 3072) == pytest.approx(3.0)


def test_nats_from_bits_per_dim_inverts_bits_per_dim():
    """1 bit/dim over 784 dims is a log-likelihood of -784 ln 2 nats."""
    assert nats_from_bits_per_dim(1.0, 784) == pytest.approx(-784 * math.log(2))
    assert nats_from_bits_per_dim(bits_per_dim(-123.4, 64), 64) == pytest.approx(-123.4)


def test_samples_per_pass_bounds_the_rows_of_one_pass():
    """Chunking decides memory and speed (never the value): at most max_batch rows a pass,
    at most CPU_PASS_ROWS on a CPU, at least one sample, never more than K."""
    from biva.objectives.importance import CPU_PASS_ROWS, samples_per_pass

    cpu, cuda = torch.device("cpu"), torch.device("cuda")   # device objects, no GPU needed
    assert samples_per_pass(1000, 10, 4096, cuda) == 409
    assert samples_per_pass(1000, 10, 4096, cpu) == CPU_PASS_ROWS // 10
    assert samples_per_pass(1000, 10, 100, cpu) == 10                  # max_batch below the cap
    assert samples_per_pass(3, 10, 4096, cuda) == 3                    # never more than K
    assert samples_per_pass(1000, 5000, 4096, cuda) == 1               # one sample at least
    assert samples_per_pass(5000, 1, 4096, cuda) == 4096
    assert samples_per_pass(5, 0, 4096, cuda) == 5                     # empty batch: no division


def test_evaluate_bounds_seeds_its_draws_and_leaves_the_callers_rng():
    """A seed fixes L_1 and L_k of every example and leaves the global RNG where it was, and
    the model's training mode is restored; seed=None draws from the global RNG."""
    from biva.data import ImageSplit
    from biva.objectives.splits import evaluate_bounds

    torch.manual_seed(0)
    model = HierarchicalVAE(preset("digits", filters=(8,), blocks=1))
    split = ImageSplit((torch.rand(6, 1, 8, 8) > 0.5).to(torch.uint8))
    model.initialize(split.images.float())
    model.train()

    def run(seed):
        return evaluate_bounds(model, split, "binary", 1, n_samples=3, batch_size=4,
                               seed=seed)["per_example"]

    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    first = run(0)
    assert torch.equal(torch.rand(2), expected_next) and model.training
    assert run(0) == first and run(7) != first
    torch.manual_seed(1)
    a = run(None)
    torch.manual_seed(1)
    assert run(None) == a and run(None) != a


def test_kl_per_group_keeps_the_hierarchy_order_in_the_written_json(tmp_path):
    """With 10+ layers, string order puts z10 before z2; results keep z1, z2, ..., z10."""
    import json

    from biva.config import ModelConfig
    from biva.data import ImageSplit
    from biva.objectives.splits import evaluate_bounds
    from biva.utils.atomic import atomic_write_json

    cfg = ModelConfig(input_shape=(1, 8, 8), latents=(2,) * 11, filters=(4,), kernels=(3,),
                      strides=(1,) * 11, blocks=1, dropout_q=0.0, dropout_p=0.0)
    model = HierarchicalVAE(cfg)
    split = ImageSplit((torch.rand(4, 1, 8, 8) > 0.5).to(torch.uint8))
    res = evaluate_bounds(model, split, "binary", 1, n_samples=1, batch_size=4)
    atomic_write_json(tmp_path / "eval.json", res)
    written = json.loads((tmp_path / "eval.json").read_text())["kl_per_group"]
    assert list(written) == model.group_names
    assert model.group_names.index("z2_bu") < model.group_names.index("z10_bu")


def test_evaluation_progress_moves_within_a_batch_and_adds_up_to_the_images():
    # At K = 1000 a batch of 100 images takes minutes: the bar sat at 0 (issue 42). It now
    # moves with each chunk of samples, and the chunks of a batch add up to its images.
    from biva.data import ImageSplit
    from biva.objectives.splits import evaluate_bounds

    torch.manual_seed(0)
    model = HierarchicalVAE(preset("digits", filters=(8,), blocks=1))
    split = ImageSplit((torch.rand(6, 1, 8, 8) > 0.5).to(torch.uint8))
    model.initialize(split.images.float())
    seen: list[float] = []
    # Passes of at most 8 rows: the batch of 4 images in 4 chunks of 2 samples (1 image's
    # worth each), the batch of 2 in 2 chunks of 4 samples (1 each).
    evaluate_bounds(model, split, "binary", 1, n_samples=8, batch_size=4, max_batch=8,
                    progress=seen.append)
    assert seen == pytest.approx([1.0] * 6) and sum(seen) == pytest.approx(6)
