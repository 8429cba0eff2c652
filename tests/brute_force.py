"""The tiny models, toy data and brute-force marginals that the bound tests check against
(tests/bounds/), and that other tests reuse (a tiny hierarchy trained on 4x4 binary images)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from biva import HierarchicalVAE, ModelConfig
from biva.models import build_hierarchy
from biva.models.semi_supervised import SemiSupervisedBIVA
from biva.objectives.training import semi_supervised_loss, training_loss

VARIANTS = ("vae", "lvae", "lvae+", "biva")
# BIVA with one prior Gaussian for z^BU_i and z^TD_i (model.biva_prior = "shared"), and the
# top-down families (TopDownVAE: VDVAE's and NVAE's blocks, NVAE's residual-normal posterior).
DENSE_MODELS = (*VARIANTS, "biva_shared")
# nvae_flows: the NVAE-style model with two IAF steps on every group's posterior.
TOPDOWN = ("vdvae", "nvae", "nvae_flows")  # test_bound_exact_topdown.py / _flows.py
K = 65536          # importance samples per image
N_PRIOR = 262144   # ancestral samples for the brute-force marginal


def tiny_config(variant: str) -> ModelConfig:
    if variant in TOPDOWN:
        # Latents at 2x2, 1x1 and 1x1, one channel each (6 units, as many as the BIVA's
        # dense ones): pooling to 2x2 and unpooling back to 4x4 are in every pass; NVAE's
        # encoder with two cells for its one group at 2x2.
        nvae = variant != "vdvae"
        return ModelConfig(variant="nvae" if nvae else "vdvae", input_shape=(1, 4, 4),
                           likelihood="bernoulli", latents=(1,), filters=(8,), spec="2x1,1x2",
                           encoder_spec="2x2,1x2" if nvae else "",
                           inner_width=0.0 if nvae else 1.0,
                           posterior_flows=2 if variant == "nvae_flows" else 0)
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
          free_bits: float = 2.0, finetune: int = 0) -> HierarchicalVAE:
    """Free bits 2 keep every group informative (no collapse of the top layers); then
    ``finetune`` steps on the plain ELBO, as the shipped recipes end."""
    torch.manual_seed(seed)
    data = toy_data(2048, seed)
    model.initialize(data[:256])
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    for step in range(steps + finetune):
        x = data[(step * 32) % 2048:(step * 32) % 2048 + 32]
        loss = training_loss(model(x), free_bits=free_bits if step < steps else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


WEIGHTS = Path(__file__).parent / "fixtures" / "brute_force"
REMAKE = "python tests/fixtures/brute_force/make_models.py"


def train_variant(variant: str) -> HierarchicalVAE:
    """The tiny model of ``variant`` trained by its recipe (seconds to a minute on one core)."""
    torch.manual_seed(1)
    # The top-down models start with their priors' and projections' outputs scaled down
    # (VDVAE's init): 400 steps make every group carry information.
    steps = 400 if variant in TOPDOWN else 100
    # Under free bits a group's KL below 2 nats costs nothing, and the flows then make q
    # narrower than the posterior (heavy-tailed weights, no sharp test): the flows model
    # ends with 200 steps on the plain ELBO, which widen q again.
    finetune = 200 if variant == "nvae_flows" else 0
    return train(build_hierarchy(tiny_config(variant)), steps=steps, lr=1e-3,
                 finetune=finetune)


def train_semi_supervised(objective: str) -> SemiSupervisedBIVA:
    """The tiny semi-supervised BIVA (3 classes) trained on unlabelled toy images; "paper"
    adds y to q(z_L | x, y) (eq. 15)."""
    torch.manual_seed(2)
    model = semi_supervised_untrained(objective)
    data = toy_data(512, seed=3)
    model.initialize(data[:128])
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    for step in range(60):
        x = data[(step * 32) % 512:(step * 32) % 512 + 32]
        # unlabelled: every class summed
        loss = semi_supervised_loss(model, model(x), free_bits=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def semi_supervised_untrained(objective: str) -> SemiSupervisedBIVA:
    """The untrained model of :func:`train_semi_supervised` (to load weights into)."""
    return SemiSupervisedBIVA(tiny_config("biva"), 3, alpha=1.0, objective=objective,
                              n_labelled=1, n_unlabelled=511)


def with_trained_weights(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the committed weights ``fixtures/brute_force/<name>.safetensors`` that
    its recipe trained (the bound checks hold for any weights; trained ones give them power,
    and training them on every run cost minutes of CI)."""
    path = WEIGHTS / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained weights; write them with {REMAKE}")
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as e:   # the model's parameters changed since they were written
        raise RuntimeError(f"{path} does not fit the current {name} model; write the weights "
                           f"again with {REMAKE} ({str(e)[:200]})") from None
    return model.eval()


class TrainedOnDemand(dict):
    """variant -> its trained tiny model (the committed weights of :func:`train_variant`),
    loaded at first use."""

    def __missing__(self, variant: str) -> HierarchicalVAE:
        self[variant] = with_trained_weights(variant, build_hierarchy(tiny_config(variant)))
        return self[variant]


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


def check_sweep_unbiased(model, images: torch.Tensor, exact: torch.Tensor,
                         se_exact: torch.Tensor) -> None:
    """bound_sweep (one bottom-up pass shared across k) gives, for every k, an unbiased
    estimate of the brute-force log p(x), and its LLR^{>2} is the difference of two of its
    bounds on the same images and draws."""
    from biva.ood.scores import bound_sweep

    torch.manual_seed(9)
    ks = list(range(model.n_layers))
    sweep = bound_sweep(model, images, ks, scores=("lk",), n_samples=K, max_batch=4 * 4096)
    for k in ks:
        est = sweep.bounds[("sample", k)]
        assert ((est - exact).abs() < 4 * se_exact + 0.25).all(), (k, est.tolist(), exact)
    torch.testing.assert_close(sweep.value("llr", 2), sweep.bounds[("sample", 0)]
                               - sweep.bounds[("sample", 2)])
    assert (sweep.anomaly("llr", 2) == sweep.value("llr", 2)).all()
    assert (sweep.anomaly("lk", 2) == -sweep.bounds[("sample", 2)]).all()
