"""The speed options compute the same model: channels-last, bf16 autocast, torch.compile,
gradient checkpointing and the cheaper weight norm, each against the plain path on one seed.

Random draws (dropout masks, latent noise) fill tensors in memory order, so a channels-last
tensor gets the same numbers at other positions: a different but equally valid draw. Tight
comparisons therefore draw the latent noise in NCHW order (``nchw_noise``) and use dropout 0
where the memory format differs.

Tolerances: channels-last and the weight-norm rewrites only reassociate float sums (tight);
bf16 rounds every activation to 8 significant bits (ELBO within 1%, the bound and the
log-densities still float32); checkpointing replays the same ops and RNG (bit-identical on
CPU is expected, checked to 1e-6).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from biva import HierarchicalVAE, importance_weighted_bound, preset
from biva.config import ModelConfig
from biva.nn.blocks import GatedResBlock, Stage, use_channels_last, use_grad_checkpointing
from biva.nn.gaussian import DiagonalGaussian
from biva.nn.weightnorm import WNConv2d, WNConvTranspose2d, WNLinear
from biva.objectives.training import training_loss


def dense_config(**kw) -> ModelConfig:
    """A small binary-image BIVA with dense latents (the `binary` preset's structure)."""
    return preset("binary", filters=(16,), blocks=2, latents=(8, 6, 4), kernels=(5, 3, 3),
                  strides=(2, 1, 2), **kw)


def conv_config(**kw) -> ModelConfig:
    """A small 16x16 RGB BIVA with conv latents and the logistic mixture (`natural32`'s)."""
    kw = {"dropout_q": 0.2, "dropout_p": 0.0, **kw}
    return ModelConfig(input_shape=(3, 16, 16), likelihood="discretized_logistic",
                       latents=(6, 4, 2), latent_type="conv", filters=(16,), kernels=(5, 3, 3),
                       strides=(2, 1, 2), blocks=1, n_mix=3, **kw)


def make_model(cfg: ModelConfig, seed: int = 0) -> tuple[HierarchicalVAE, torch.Tensor]:
    torch.manual_seed(seed)
    model = HierarchicalVAE(cfg)
    c, h, w = cfg.input_shape
    if cfg.likelihood == "bernoulli":
        x = torch.bernoulli(torch.rand(16, c, h, w))
    else:
        x = torch.randint(0, 256, (16, c, h, w)).float() / 127.5 - 1
    model.initialize(x)
    return model, x


def train_pass(model: HierarchicalVAE, x: torch.Tensor, seed: int = 1, amp: bool = False):
    """Loss, per-example log-weights and every gradient of one training pass on a fixed seed."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
        out.loss = training_loss(out, free_bits=0.5)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out, grads


@pytest.fixture
def nchw_noise(monkeypatch):
    """Latent noise drawn in logical (NCHW) order, whatever the memory format of mu."""
    def sample(self, temperature=1.0, noise=None):
        eps = torch.randn(self.mu.shape, dtype=self.mu.dtype) if noise is None else noise
        return self.mu + (temperature * self.sigma) * eps

    monkeypatch.setattr(DiagonalGaussian, "sample", sample)


CONFIGS = [pytest.param(dense_config, id="dense-bernoulli"),
           pytest.param(conv_config, id="conv-logistic")]


@pytest.mark.parametrize("make_cfg", CONFIGS)
def test_channels_last_matches_contiguous(make_cfg, nchw_noise):
    plain, x = make_model(make_cfg(dropout_q=0.0, dropout_p=0.0))
    fast = use_channels_last(copy.deepcopy(plain))
    out_a, grads_a = train_pass(plain, x)
    out_b, grads_b = train_pass(fast, x)
    torch.testing.assert_close(out_b.log_weight, out_a.log_weight, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=1e-5, atol=1e-4)
    for name, g in grads_a.items():  # norm-wise: weight-norm grads are projections
        assert (grads_b[name] - g).norm() <= 1e-4 * g.norm() + 1e-9, name
    # The activations really are channels-last (the dense-latent embeddings are converted).
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: seen.append(o))
             for m in fast.modules() if isinstance(m, GatedResBlock)]
    with torch.no_grad():
        fast(x)
    for h in hooks:
        h.remove()
    assert seen and all(o.is_contiguous(memory_format=torch.channels_last) for o in seen)
    # Parameters keep their layout: state dicts (checkpoints) are unchanged.
    assert all(p.is_contiguous() for p in fast.parameters())


@pytest.mark.parametrize("make_cfg", CONFIGS)
def test_bf16_autocast_stays_within_one_percent_and_keeps_the_bound_in_float32(make_cfg,
                                                                                nchw_noise):
    plain, x = make_model(make_cfg())
    fast = use_channels_last(copy.deepcopy(plain))
    out_a, _ = train_pass(plain, x)
    out_b, grads_b = train_pass(fast, x, amp=True)
    assert out_b.log_weight.dtype == torch.float32 and out_b.kl.dtype == torch.float32
    assert out_b.log_px.dtype == torch.float32 and out_b.loss.dtype == torch.float32
    # Latent heads emit float32 under autocast: draws and log-densities are never bf16.
    for name, z in out_b.latents.items():
        assert z.dtype == torch.float32, name
        assert out_b.posteriors[name].sigma.dtype == torch.float32, name
    elbo_a, elbo_b = out_a.elbo.detach().mean(), out_b.elbo.detach().mean()
    assert abs(float(elbo_b - elbo_a)) <= 0.01 * abs(float(elbo_a))
    assert all(torch.isfinite(g).all() for g in grads_b.values())
    # The importance-weighted bound under autocast: same seed, within 1%.
    torch.manual_seed(2)
    lk_a = importance_weighted_bound(plain, x[:4], 32, max_batch=64)
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lk_b = importance_weighted_bound(fast, x[:4], 32, max_batch=64)
    assert lk_b.dtype == torch.float64
    assert torch.all((lk_b - lk_a).abs() <= 0.01 * lk_a.abs())


@pytest.mark.parametrize("make_cfg", CONFIGS)
def test_grad_checkpointing_gives_the_same_gradients(make_cfg):
    plain, x = make_model(make_cfg(dropout_q=0.3, dropout_p=0.3))
    ckpt = use_grad_checkpointing(copy.deepcopy(plain))
    assert all(s.grad_checkpointing for s in ckpt.modules() if isinstance(s, Stage))
    out_a, grads_a = train_pass(plain, x)
    out_b, grads_b = train_pass(ckpt, x)
    # Same dropout masks in the recomputation (RNG replayed), so the same numbers.
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=0, atol=0)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-6, atol=1e-7, msg=name)
    # The RNG stream after the pass is the one without checkpointing (resume stays exact).
    torch.manual_seed(3)
    train_pass(plain, x, seed=3)
    after_plain = torch.rand(4)
    train_pass(ckpt, x, seed=3)
    assert torch.equal(torch.rand(4), after_plain)


def test_grad_checkpointing_with_channels_last_and_bf16():
    plain, x = make_model(dense_config(dropout_q=0.3, dropout_p=0.3))
    a = use_channels_last(copy.deepcopy(plain))
    b = use_grad_checkpointing(use_channels_last(copy.deepcopy(plain)))
    out_a, grads_a = train_pass(a, x, amp=True)
    out_b, grads_b = train_pass(b, x, amp=True)
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=1e-6, atol=1e-6)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_weight_norm_layers_equal_the_textbook_formula():
    torch.manual_seed(0)
    for layer, x in ((WNConv2d(5, 7, 3), torch.randn(2, 5, 6, 6)),
                     (WNConvTranspose2d(5, 7, 3, 2), torch.randn(2, 5, 6, 6)),
                     (WNLinear(11, 4), torch.randn(3, 11))):
        with torch.no_grad():
            layer.g.uniform_(0.5, 2.0)
            layer.bias.normal_()
        v, g = layer.v, layer.g
        dims = tuple(d for d in range(v.dim()) if d != layer._out_dim)
        shape = [1] * v.dim()
        shape[layer._out_dim] = -1
        w = g.view(shape) * v / v.pow(2).sum(dims, keepdim=True).sqrt()
        torch.testing.assert_close(layer.weight(), w, rtol=1e-6, atol=1e-7)
        if isinstance(layer, WNLinear):
            ref = F.linear(x, w, layer.bias)
        elif isinstance(layer, WNConv2d):
            ref = F.conv2d(x, w, layer.bias, padding=1)
        else:
            ref = F.conv_transpose2d(x, w, layer.bias, stride=2, padding=1, output_padding=1)
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(layer(x).square().sum(), (v, g))
        grads_ref = torch.autograd.grad(ref.square().sum(), (v, g))
        for a, b in zip(grads, grads_ref, strict=True):
            assert (a - b).norm() <= 1e-5 * b.norm()


def test_trainer_applies_the_speed_options(tmp_path):
    from biva.config import load_run_config
    from biva.training import Trainer

    cfg = load_run_config("digits", ["train.steps=2", "train.finetune_steps=0",
                                     "train.progress=false", "train.init_batch=32",
                                     "train.batch_size=16", "data.valid_size=1150",
                                     "model.filters=[8]", "model.blocks=1",
                                     "train.grad_checkpointing=true", "train.amp=bf16"])
    assert cfg.train.channels_last  # the default
    trainer = Trainer(cfg, tmp_path / "run")
    for model in (trainer.model, trainer.ema.model):
        blocks = [m for m in model.modules() if isinstance(m, GatedResBlock)]
        assert blocks and all(b.channels_last for b in blocks)
        assert all(s.grad_checkpointing for s in model.modules() if isinstance(s, Stage))
    stats = trainer.train_step(trainer._batch(next(trainer._batches())[1]))
    assert torch.isfinite(stats["loss"]) and float(stats["skipped"]) == 0.0


@pytest.mark.slow
@pytest.mark.extended
def test_compiled_step_matches_eager(nchw_noise):
    """train.compile: the compiled model gives the eager loss and gradients (no dropout; the
    latent noise comes from the eager RNG via inductor's fallback_random)."""
    pytest.importorskip("torch._inductor")
    import torch._inductor.config as inductor_config

    plain, x = make_model(dense_config(dropout_q=0.0, dropout_p=0.0))
    fast = use_channels_last(copy.deepcopy(plain))
    compiled = torch.compile(fast)
    out_a, grads_a = train_pass(plain, x)
    with inductor_config.patch(fallback_random=True):
        plain.train()
        compiled.train()
        compiled.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out_b = compiled(x)
        out_b.loss = training_loss(out_b, free_bits=0.5)
        out_b.loss.backward()
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=1e-4, atol=1e-4)
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads_a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_biva_evaluate_amp_and_channels_last_flags(tmp_path):
    from biva.cli.main import main
    from biva.config import load_run_config
    from biva.training import Trainer

    cfg = load_run_config("digits", ["train.steps=2", "train.finetune_steps=0",
                                     "train.progress=false", "train.init_batch=32",
                                     "train.batch_size=16", "data.valid_size=1150",
                                     "model.filters=[8]", "model.blocks=1",
                                     "train.checkpoint_every=2", "train.eval_every=2",
                                     "train.eval_batches=1"])
    run = tmp_path / "run"
    Trainer(cfg, run).fit()
    results = {}
    for flags in (["--amp", "none", "--no-channels-last"], ["--amp", "bf16", "--channels-last"]):
        out = tmp_path / f"{flags[1]}.json"
        torch.manual_seed(0)
        assert main(["evaluate", str(run), "--samples", "8", "--n-examples", "40", "--threads", "1",
                     "--device", "cpu", "--out", str(out), *flags]) == 0
        results[flags[1]] = json.loads(out.read_text())
    assert results["bf16"]["amp"] == "bf16" and results["none"]["amp"] == "none"
    for key in ("L_1", "L_8"):
        ref = results["none"][key]
        assert abs(results["bf16"][key] - ref) <= 0.01 * abs(ref), key
