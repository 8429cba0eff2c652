"""The bounds of ``HierarchicalVAE`` itself against brute force, and the training objective
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
"""

from __future__ import annotations

import math

import pytest
import torch

from biva import HierarchicalVAE, ModelConfig
from biva.models import build_hierarchy
from biva.models.semi_supervised import SemiSupervisedBIVA

VARIANTS = ("vae", "lvae", "lvae+", "biva")
# BIVA with one prior Gaussian for z^BU_i and z^TD_i (model.biva_prior = "shared"), and the
# top-down families (TopDownVAE: VDVAE's and NVAE's blocks, NVAE's residual-normal posterior).
DENSE_MODELS = (*VARIANTS, "biva_shared")
TOPDOWN = ("vdvae", "nvae")     # checked in test_bound_exact_topdown.py (another xdist worker)
K = 65536          # importance samples per image
N_PRIOR = 262144   # ancestral samples for the brute-force marginal


def tiny_config(variant: str) -> ModelConfig:
    if variant in ("vdvae", "nvae"):
        # Latents at 2x2, 1x1 and 1x1, one channel each (6 units, as many as the BIVA's
        # dense ones): pooling to 2x2 and unpooling back to 4x4 are in every pass; NVAE's
        # encoder with two cells for its one group at 2x2.
        return ModelConfig(variant=variant, input_shape=(1, 4, 4), likelihood="bernoulli",
                           latents=(1,), filters=(8,), spec="2x1,1x2",
                           encoder_spec="2x2,1x2" if variant == "nvae" else "",
                           inner_width=1.0 if variant == "vdvae" else 0.0)
    shared = variant == "biva_shared"
    return ModelConfig(variant="biva" if shared else variant, input_shape=(1, 4, 4),
                       likelihood="bernoulli", latents=(4, 3, 2), latent_type="dense",
                       filters=(8,), kernels=(3,), strides=(2, 1, 2), blocks=1, dropout_q=0.0,
                       dropout_p=0.0, biva_prior="shared" if shared else "separate")


def toy_data(n: int, seed: int = 0) -> torch.Tensor:
    """Binary 4x4 images: 4 prototypes with 10% of the pixels flipped, (n, 1, 4, 4)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 0, 0] * 4, [0, 0, 1, 1] * 4, [1, 0] * 8,
                           [1] * 8 + [0] * 8], dtype=torch.float32).view(4, 1, 4, 4)
    x = protos[torch.randint(0, 4, (n,), generator=g)]
    flip = torch.rand(x.shape, generator=g) < 0.1
    return torch.where(flip, 1 - x, x)


def train(model: HierarchicalVAE, steps: int = 100, seed: int = 0, lr: float = 1e-3,
          free_bits: float = 2.0) -> HierarchicalVAE:
    """Free bits 2 keep every group informative (no collapse of the top layers)."""
    torch.manual_seed(seed)
    data = toy_data(2048, seed)
    model.initialize(data[:256])
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    for step in range(steps):
        x = data[(step * 32) % 2048:(step * 32) % 2048 + 32]
        loss = model(x, free_bits=free_bits).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TrainedOnDemand(dict):
    """variant -> its trained tiny model, trained at first use (seconds; a module trains only
    the variants it checks). Each is seeded on its own, so the order of use changes nothing."""

    def __missing__(self, variant: str) -> HierarchicalVAE:
        torch.manual_seed(1)
        # The top-down models start with their priors' and projections' outputs scaled down
        # (VDVAE's init): 400 steps make every group carry information.
        steps = 400 if variant in TOPDOWN else 100
        self[variant] = train(build_hierarchy(tiny_config(variant)), steps=steps, lr=1e-3)
        return self[variant]


@pytest.fixture(scope="module")
def trained() -> TrainedOnDemand:
    """One trained tiny model per variant."""
    return TrainedOnDemand()


@pytest.fixture(scope="module")
def images():
    """4 distinct test images: the 4 prototypes with one different pixel flipped each."""
    x = toy_data(64, seed=7)
    uniq = torch.unique(x.flatten(1), dim=0)[:4]
    assert len(uniq) == 4
    return uniq.view(4, 1, 4, 4)


@pytest.fixture(scope="module")
def exact_log_px(trained, images):
    """variant -> brute-force (log p(images), s.e.) of ``trained[variant]``, computed once: the
    seeded ancestral draws give the same value at every call, and they are the slow part."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        if variant not in cache:
            cache[variant] = brute_force_log_px(trained[variant], images)
        return cache[variant]
    return get


@torch.no_grad()
def log_mean_exp(lw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lw (S, B) -> log mean_s exp(lw) (B,) and its delta-method standard error (B,)."""
    lw = lw.double()
    m = torch.logsumexp(lw, 0) - math.log(lw.shape[0])
    w = torch.exp(lw - m)  # mean 1 per column
    return m, w.std(0) / math.sqrt(lw.shape[0])


@torch.no_grad()
def brute_force_log_px(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) = log mean_{z ~ p(z)} p(x | z) by ancestral sampling: (B,) and its s.e."""
    torch.manual_seed(123)
    chunks = []
    for _ in range(N_PRIOR // 16384):
        params = model.sample_params(16384)
        lp = torch.stack([model.likelihood.log_prob(params, xi.expand(16384, *xi.shape))
                          for xi in x], 1)
        chunks.append(lp)
    return log_mean_exp(torch.cat(chunks))


@torch.no_grad()
def iw_log_px(model, x: torch.Tensor, k: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the mean importance weight of ``forward`` over K samples per image: (B,)."""
    torch.manual_seed(321)
    lw = [model(x, n_samples=4096, prior_layers=k, **kw).log_weight.view(4096, -1)
          for _ in range(K // 4096)]
    return log_mean_exp(torch.cat(lw))


def check_unbiased(model, images: torch.Tensor, exact: torch.Tensor, se_exact: torch.Tensor,
                   variant: str) -> None:
    """Every L^{>k} weight of ``model``, k = 0..L-1, log-mean over K samples = brute force."""
    assert (se_exact < 0.02).all(), "brute force too noisy to be a reference"
    for k in range(model.n_layers):
        est, se = iw_log_px(model, images, k)
        tol = 4 * torch.sqrt(se**2 + se_exact**2) + 0.01
        assert (se < 0.06).all(), f"k={k}: weights too heavy-tailed for a sharp test ({se})"
        err = (est - exact).abs()
        assert (err < tol).all(), (
            f"{variant} L^{{>{k}}} weights: log-mean {est.tolist()} vs brute-force log p(x) "
            f"{exact.tolist()} (tolerance {tol.tolist()})")


def check_sensitive(model, images: torch.Tensor, exact: torch.Tensor) -> None:
    """:func:`check_unbiased` is only sharp if q differs from p and every layer matters."""
    torch.manual_seed(0)   # the draws must not depend on which tests ran before
    with torch.no_grad():
        kl = model(images.repeat(256, 1, 1, 1)).kl_per_group.mean(0)
    # Each group carries information (else dropping its KL would change nothing).
    assert (kl > 0.01).all() and kl.sum() > 0.5, dict(zip(model.group_names, kl.tolist(),
                                                          strict=True))
    # ELBO well below log p(x): the weights are far from constant.
    with torch.no_grad():
        elbo = model(images, n_samples=4096).elbo
    assert ((exact - elbo) > 0.05).all()


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
    """loss = -mean_n [log p(x_n|z) - sum_g max(KL_{n,g}, lambda)], checked by hand."""
    model = trained["biva"]
    x = images.repeat(8, 1, 1, 1)
    torch.manual_seed(5)
    out = model(x, free_bits=0.0)
    kl = out.kl.detach()
    lam = float(kl.median())
    # The hand computations below differ only if some (row, group) entries lie on each side
    # of lambda and the total / batch-mean KL would clamp differently.
    assert (kl < lam).any() and (kl > lam).any()
    torch.manual_seed(5)
    fb = model(x, free_bits=lam)
    torch.testing.assert_close(fb.kl, out.kl)
    per_group = -(out.log_px - kl.clamp_min(lam).sum(1)).mean()
    torch.testing.assert_close(fb.loss, per_group)
    log_px = out.log_px.detach()
    wrong = {
        "total KL": -(log_px - kl.sum(1).clamp_min(lam)).mean(),
        "batch-mean KL": -(log_px.mean() - kl.mean(0).clamp_min(lam).sum()),
    }
    for name, value in wrong.items():
        assert abs(float(value) - float(per_group.detach())) > 1e-3, f"{name} gives the same loss"
    # kl_weight scales the clamped KL only.
    torch.manual_seed(5)
    half = model(x, free_bits=lam, kl_weight=0.5)
    torch.testing.assert_close(half.loss, -(out.log_px - 0.5 * kl.clamp_min(lam).sum(1)).mean())


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
