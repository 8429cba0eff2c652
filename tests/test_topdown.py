"""The VDVAE- and NVAE-style hierarchies (biva.models.topdown): the residual-normal posterior,
the spec, the paper-scale parameter counts by hand, L^{>k}, spectral regularization, and the
commands that take any run directory. Their importance weights are checked against brute
force in test_bound_exact_topdown.py, the BIVA family's check (test_bound_exact.py and
test_bound_exact_ladders.py)."""

from __future__ import annotations

import pytest
import torch

from biva import ModelConfig
from biva.config import ConfigError
from biva.config.presets import preset
from biva.config.run import RunConfig
from biva.models import TopDownVAE, build_hierarchy
from biva.models import build_hierarchy as build_model
from biva.models.topdown import residual_normal
from biva.nn.gaussian import DiagonalGaussian
from biva.nn.residual import SpectralPenalty, conv


def tiny(family: str, **kw) -> ModelConfig:
    base = dict(variant=family, input_shape=(3, 8, 8), likelihood="discretized_logistic",
                n_mix=2, latents=(2,), filters=(8,), spec="8x1,4x2,1x1")
    if family == "nvae":
        base["encoder_spec"] = "8x2,4x2,1x1"
    return ModelConfig(**{**base, **kw})


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 8, 8), generator=g) * 2 - 1


@pytest.mark.parametrize("kernel,groups", [(5, 6), (3, 1), (5, 1), (1, 1)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (1, 3), (2, 5), (3, 3), (6, 6)])
def test_same_conv_crops_its_kernel_without_changing_output_or_gradients(kernel, groups, hw):
    """The cropped kernel on inputs smaller than the kernel gives nn.Conv2d's output and
    gradients (a wrong crop offset or padding shifts or drops taps and fails this)."""
    torch.manual_seed(0)
    fast = conv(6, 6, kernel, groups=groups)
    ref = torch.nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=groups)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, *hw, requires_grad=True)
    y_fast, y_ref = fast(x), ref(x)
    assert y_fast.shape == y_ref.shape == (3, 6, *hw)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_ref)
    gx_fast, gw_fast = torch.autograd.grad(y_fast, (x, fast.weight), g)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, ref.weight), g)
    torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_fast, gw_ref, rtol=1e-5, atol=1e-6)


def test_same_conv_needs_an_odd_kernel():
    with pytest.raises(ValueError, match="odd kernel"):
        conv(4, 4, 4)


def test_residual_normal_is_the_prior_at_zero_shift_and_unit_scale():
    g = torch.Generator().manual_seed(0)
    prior = DiagonalGaussian(torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g) + .1)
    q = residual_normal(prior, torch.zeros(4, 3), torch.ones(4, 3))
    assert torch.equal(q.mu, prior.mu) and torch.equal(q.sigma, prior.sigma)
    shift, scale = torch.full((4, 3), 0.5), torch.full((4, 3), 2.0)
    q = residual_normal(prior, shift, scale)
    torch.testing.assert_close(q.mu, prior.mu + 0.5)
    torch.testing.assert_close(q.sigma, prior.sigma * 2)


def test_nvae_posterior_moves_with_its_prior():
    """With the posterior's last conv at zero, q equals p (up to the std floor) for any prior:
    NVAE's parameterization, not VDVAE's (whose q ignores p)."""
    model = TopDownVAE(tiny("nvae")).eval()
    block = model.blocks[1]                        # layer 3, at 4x4: a conditional prior
    with torch.no_grad():
        block.post.weight.zero_()
        block.post.bias.zero_()
    s = torch.randn(5, 8, 4, 4)
    a = torch.randn(5, 8, 4, 4)
    for scale in (1.0, 3.0):
        p, _ = block.prior(s * scale)
        q = block.posterior(s * scale, a, p)
        torch.testing.assert_close(q.mu, p.mu)
        torch.testing.assert_close(q.sigma, p.sigma * (1 + model.config.min_std))
    vdvae = TopDownVAE(tiny("vdvae")).eval().blocks[1]
    p1, _ = vdvae.prior(s)
    q1 = vdvae.posterior(s, a, p1)
    q2 = vdvae.posterior(s, a, DiagonalGaussian(p1.mu + 5, p1.sigma))
    torch.testing.assert_close(q1.mu, q2.mu)


@pytest.mark.parametrize("family", ["vdvae", "nvae"])
def test_spec_gives_the_layers_and_their_resolutions(family):
    model = TopDownVAE(tiny(family))
    assert model.n_layers == 4 and model.group_names == ["z1", "z2", "z3", "z4"]
    assert [model.latent_shape(i) for i in range(1, 5)] == [
        (2, 8, 8), (2, 4, 4), (2, 4, 4), (2, 1, 1)]
    x = images()
    model.initialize(x)
    out = model(x, n_samples=3)
    assert out.log_weight.shape == (18,) and out.kl.shape == (18, 4)
    assert {k: tuple(v.shape[1:]) for k, v in out.latents.items()} == {
        f"z{i}": model.latent_shape(i) for i in range(1, 5)}
    # Every latent sample reaches the image: p(x|z) changes with each layer's draw.
    assert out.x_params.shape == (18, model.likelihood.param_channels(3), 8, 8)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("spec", "8x1,4", "model.spec: expected entries RESxBLOCKS"),
    ("spec", "4x1,8x1", "falling resolutions"),
    ("spec", "3x1", "dividing the image side 8"),
    ("spec", "", "model.spec: expected blocks per resolution"),
    ("encoder_spec", "8x1,4x1", "model.encoder_spec: expected the resolutions"),
    ("latents", (2, 2), "model.latents: expected 1 or 4 values"),
    ("filters", (8, 8), "model.filters: expected one positive width"),
])
def test_bad_specs_are_refused_naming_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        tiny("vdvae", **{field: value}).validate()


def test_nvae_encoder_needs_a_multiple_of_the_latent_groups():
    with pytest.raises(ConfigError, match="for nvae, a multiple"):
        tiny("nvae", encoder_spec="8x1,4x3,1x1").validate()


def _conv(i: int, o: int, k: int, groups: int = 1) -> int:
    return o * (i // groups) * k * k + o


def _bottleneck(i: int, m: int, o: int, r: int) -> int:
    k = 3 if r > 2 else 1
    return _conv(i, m, 1) + 2 * _conv(m, m, k) + _conv(m, o, 1)


def test_vdvae_cifar10_preset_has_the_papers_parameter_count():
    """By hand from VDVAE's blocks: 39.05M against the paper's 39M."""
    W, m, z = 384, 96, 16
    dec = {32: 22, 16: 11, 8: 6, 4: 3, 1: 1}
    enc = {32: 12, 16: 7, 8: 7, 4: 4, 1: 3}
    total = _conv(3, W, 3)                                               # stem
    total += sum(n * _bottleneck(W, m, W, r) for r, n in enc.items())    # encoder
    total += sum(W * r * r for r in dec)                                 # state constants
    for r, n in dec.items():
        for b in range(n):
            top = r == 1 and b == 0
            total += _bottleneck(2 * W, m, 2 * z, r)                     # posterior
            total += 0 if top else _bottleneck(W, m, 2 * z + W, r)       # prior + h_p
            total += _conv(z, W, 1) + _bottleneck(W, m, W, r)            # z projection, res
    total += W * 100 + 100 + 100                                         # out conv (WN: g)
    model = build_hierarchy(preset("vdvae-cifar10"))
    assert model.n_layers == 43
    assert sum(p.numel() for p in model.parameters()) == total
    assert abs(total - 39e6) / 39e6 < 0.01


def test_nvae_cifar10_preset_parameter_count_by_hand():
    W, E, z = 128, 768, 20

    def bn(c):
        return 2 * c

    def se(c):
        h = max(c // 16, 4)
        return c * h + h + h * c + c

    enc_cell = 2 * bn(W) + 2 * _conv(W, W, 3) + se(W)
    dec_cell = (bn(W) + _conv(W, E, 1) + bn(E) + _conv(E, E, 5, groups=E) + bn(E)
                + _conv(E, W, 1) + bn(W) + se(W))
    total = _conv(3, W, 3) + 60 * enc_cell + W * 16 * 16
    total += enc_cell + dec_cell          # one cell each at 32x32 (the spec starts at 16)
    for g in range(30):
        top = g == 0
        total += 0 if top else dec_cell + _conv(W, 2 * z, 3)   # cell, prior
        total += _conv(W, W, 1) + _conv(W, 2 * z, 3)           # posterior's input, head
        total += _conv(z, W, 1)                                # z into the state
    total += W * 100 + 100 + 100
    model = build_hierarchy(preset("nvae-cifar10"))
    assert model.n_layers == 30
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize("family", ["vdvae", "nvae"])
def test_l_greater_k_draws_layers_up_to_k_from_the_prior(family):
    torch.manual_seed(0)
    model = TopDownVAE(tiny(family))
    x = images(4)
    model.initialize(x)
    model.eval()
    with torch.no_grad():   # VDVAE's priors start at N(0, I) for any state: move them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    out = model(x, n_samples=32, prior_layers=2)
    kl = out.kl_per_group
    assert (kl[:, :2] == 0).all() and (kl[:, 2:] != 0).all()
    assert set(out.posteriors) == {"z3", "z4"}
    z1 = out.latents["z1"].view(32, 4, -1)
    assert (z1.std(0) > 1e-3).all()                 # drawn, not a mean
    mean = model(x, n_samples=2, prior_layers=2, prior_mode="mean")
    z1m = mean.latents["z1"].view(2, 4, -1)
    assert (z1m[0] != z1m[1]).any()                 # the mean of p(z1 | drawn z_>1)...
    torch.manual_seed(1)
    a = model(x, prior_layers=1, prior_mode="mean").latents["z1"]
    torch.manual_seed(1)
    b = model(x, prior_layers=1, prior_mode="mean").latents["z1"]
    torch.testing.assert_close(a, b)                # ...is a function of z_>1 only


@pytest.mark.parametrize("family", ["vdvae", "nvae"])
def test_generation_with_a_seed_and_temperatures(family):
    torch.manual_seed(0)
    model = TopDownVAE(tiny(family))
    model.initialize(images())
    g = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    a, b = model.sample(4, generator=g()), model.sample(4, generator=g())
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b)
    cold = model.sample(4, temperature=[0.0, 0.0, 0.0, 1.0], generator=g())
    colder = model.sample(4, temperature=[0.0, 0.0, 0.0, 1.0], generator=torch.Generator()
                          .manual_seed(3))
    assert torch.equal(cold, colder)
    with pytest.raises(ValueError, match="expected one value or 4"):
        model.sample(2, temperature=[1.0, 1.0])
    with pytest.raises(ValueError, match="class conditioning"):
        model.generate_from_top(torch.zeros(2, 2, 1, 1), td_context=[None])


def test_nvae_train_and_eval_modes_agree_after_training():
    """Batch norm's running statistics describe what training saw: no cell of NVAE's
    decoder is fed a batch-constant input (its batch variance would be 0 in training)."""
    torch.manual_seed(0)
    model = TopDownVAE(tiny("nvae"))
    x = images(64)
    model.initialize(x[:16])
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    for step in range(100):
        batch = x[(step % 4) * 16:(step % 4 + 1) * 16]
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        torch.manual_seed(2)
        train_elbo = model(x).elbo.mean()
        model.eval()
        torch.manual_seed(2)
        eval_elbo = model(x).elbo.mean()
    assert abs(float(eval_elbo - train_elbo)) < 0.05 * abs(float(train_elbo))


def test_spectral_penalty_finds_the_largest_singular_value():
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(4, 6, 3), torch.nn.Conv2d(6, 6, 1), torch.nn.Conv2d(8, 8, 5,
                                                                                 groups=8)]
    pen = SpectralPenalty(convs)
    for _ in range(200):
        value = pen()
    exact = sum(torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2) for c in convs)
    torch.testing.assert_close(value.detach(), exact, rtol=1e-3, atol=1e-4)
    value.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    pen.eval()                                      # eval: the vectors stay where they are
    before = [b.clone() for b in pen.buffers()]
    pen()
    assert all(torch.equal(a, b) for a, b in zip(before, pen.buffers(), strict=True))


def test_spectral_reg_joins_the_training_loss_and_is_refused_for_the_biva_family(tmp_path):
    """The trainer's objective is the free-bits loss plus spectral_reg x the penalty (the
    penalty is added outside the model's pass, so a dropped term would go unseen)."""
    from tiny import digits_config

    from biva.objectives.training import training_loss
    from biva.training import Trainer
    from biva.training.schedule import free_bits, kl_weight

    topdown = ("model.variant=nvae", "model.spec=4x1,2x1", "model.encoder_spec=4x1,2x1",
               "model.latents=[2]")
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    for reg in (0.0, 0.5):
        cfg = digits_config(*topdown, f"train.spectral_reg={reg}", "train.finetune_steps=0",
                            steps=1)
        trainer = Trainer(cfg, tmp_path / f"reg{reg}")
        # The penalty's power iteration advances at each call in train mode: the expected
        # value is taken from the same state.
        state = [b.clone() for b in trainer.model.spectral.buffers()]
        torch.manual_seed(1)
        out = trainer._forward(x, None)
        objective = training_loss(out, free_bits=free_bits(cfg.train, 0),
                                  kl_weight=kl_weight(cfg.train, 0))
        for b, saved in zip(trainer.model.spectral.buffers(), state, strict=True):
            b.copy_(saved)
        penalty = trainer.model.spectral_penalty()
        # (the loss is ~1e2 nats in float32: compare the difference to 1e-3)
        torch.testing.assert_close(out.loss - objective, reg * penalty, atol=1e-3, rtol=0)
    assert 0.5 * penalty > 0.01   # the term is not negligible
    cfg = RunConfig()
    cfg.train.spectral_reg = 0.1
    with pytest.raises(ConfigError, match="train.spectral_reg: spectral regularization is for"):
        cfg.validate()
    cfg.model = tiny("nvae")
    cfg.validate()


def test_semi_supervised_models_refuse_the_topdown_families():
    with pytest.raises(ConfigError, match="semi-supervised models are built on the BIVA"):
        build_model(tiny("vdvae"), num_classes=10)
    assert isinstance(build_model(tiny("vdvae")), TopDownVAE)


def test_every_command_takes_a_topdown_run(tmp_path, monkeypatch):
    """train, resume, evaluate (L_K), sample, report and ood on an NVAE-style digits run."""
    import json

    from biva.cli.main import main

    run = tmp_path / "run"
    base = ["--config", "digits", "--set", "model.variant=nvae", "--set", "model.spec=4x2,2x1",
            "--set", "model.latents=[2]", "--set", "model.filters=[8]",
            "--set", "train.spectral_reg=0.01", "--set", "train.batch_size=16",
            "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2",
            "--set", "train.log_every=2", "--set", "train.finetune_steps=0",
            "--threads", "1", "--no-progress"]
    assert main(["train", *base, "--run-dir", str(run), "--set", "train.steps=2"]) == 0
    assert main(["train", "--resume", str(run), "--no-progress", "--steps", "4"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["variant"] == "nvae" and cfg["train"]["spectral_reg"] == 0.01
    assert main(["evaluate", str(run), "--samples", "5", "--no-progress"]) == 0
    result = json.loads(next(run.glob("eval_test_k5*.json")).read_text())
    assert result["L_5"] >= result["L_1"] - 1.0
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert main(["report", str(run)]) == 0
    assert main(["ood", str(run), "--ood-data", "uniform", "--prior-layers", "1", "--samples", "2",
                 "--n-examples", "32", "--no-progress"]) == 0
    assert (run / "ood" / "detector.json").is_file()


@pytest.mark.slow
@pytest.mark.extended
def test_nvae_trains_under_torchrun(tmp_path):
    """Two gloo ranks (batch norm, squeeze-and-excitation and the spectral penalty under DDP)
    train, checkpoint and evaluate an NVAE-style model through the CLI."""
    import os
    import subprocess
    import sys

    from biva.utils.checkpoint import list_checkpoints

    run = tmp_path / "run"
    sets = ["model.variant=nvae", "model.spec=4x2,2x1", "model.latents=[2]",
            "model.filters=[8]", "train.spectral_reg=0.01", "train.batch_size=32",
            "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4",
            "train.finetune_steps=0", "train.eval_batches=1", "train.progress=false",
            "train.threads=1", "train.init_batch=64", "data.valid_size=1150"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "biva.cli.main", "train", "--config", "digits", "--steps", "4",
           "--run-dir", str(run), *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step_000000004"]
