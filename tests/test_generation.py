"""Generation (samples, partial generations, reconstructions, interpolation) and diagnostics
(KL per epoch, active units, ESS, validation statistics) on a tiny BIVA trained in the test
session (fixture ``tiny_run`` in conftest.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from biva.cli.main import main
from biva.data import evaluation_split, load_run_data, to_model_input
from biva.evaluation import generation as gen
from biva.evaluation.diagnostics import (
    ACTIVE_UNIT_THRESHOLD,
    active_units,
    active_units_from_means,
    ess_statistics,
    kl_per_epoch,
    training_curves,
)
from biva.nn.gaussian import DiagonalGaussian
from biva.objectives.splits import validation_elbo, validation_statistics
from biva.runs.loading import load_trained
from biva.utils.jsonl import read_jsonl


@pytest.fixture(scope="module")
def trained(tiny_run):
    model, cfg, _ = load_trained(tiny_run, "best")
    data = load_run_data(cfg)
    return model, cfg, data


@pytest.fixture(scope="module")
def x(trained):
    model, cfg, data = trained
    test = evaluation_split(data, "test", seed=cfg.train.seed)
    return to_model_input(test.images[:6], data.kind, cfg.model.bits)


# ----------------------------------------------------------------------------- generation
def test_shapes_and_ranges(trained, x):
    model, _, _ = trained
    L = model.n_layers
    s = gen.samples_at_temperatures(model, 5, [1.0, 0.5, [1.0] * L])
    assert s.shape == (3, 5, 1, 8, 8)
    p = gen.partial_generations(model, x, range(L), seed=0)
    assert p.shape == (6, L, 1, 8, 8)
    assert gen.reconstructions(model, x, seed=0).shape == (6, 1, 8, 8)
    i = gen.interpolate_top(model, x[:3], x[3:], steps=4)
    assert i.shape == (3, 4, 1, 8, 8)
    for t in (s, p, i):  # Bernoulli means
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
    with pytest.raises(ValueError, match="prior_layers"):
        gen.partial_generations(model, x, [L])


def test_partial_generation_at_zero_is_the_reconstruction(trained, x):
    model, _, _ = trained
    # Same seed, same call path: identical.
    assert torch.equal(gen.partial_generations(model, x, [0, 1], seed=5)[:, 0],
                       gen.reconstructions(model, x, seed=5))
    # Different seeds: the same distribution, so the means over many draws agree.
    xs = x.repeat(40, 1, 1, 1)
    a = gen.partial_generations(model, xs, [0], seed=1)[:, 0].view(40, 6, -1).mean(0)
    b = gen.reconstructions(model, xs, seed=2).view(40, 6, -1).mean(0)
    assert (a - b).abs().max() < 0.05
    # The seeded call leaves the global RNG alone.
    torch.manual_seed(0)
    ref = torch.rand(3)
    torch.manual_seed(0)
    gen.reconstructions(model, x, seed=9)
    assert torch.equal(torch.rand(3), ref)


def test_rows_at_different_temperatures_share_the_noise(trained, monkeypatch):
    model, _, _ = trained
    L = model.n_layers
    seen: list[list[tuple]] = []
    orig_generate = type(model)._generate
    orig_sample = DiagonalGaussian.sample

    def generate(self, *args):
        seen.append([])
        return orig_generate(self, *args)

    def sample(self, temperature=1.0, noise=None):
        seen[-1].append((temperature, noise.clone()))
        return orig_sample(self, temperature, noise)

    monkeypatch.setattr(type(model), "_generate", generate)
    monkeypatch.setattr(DiagonalGaussian, "sample", sample)
    temps = [1.0, 0.5, [0.8] * (L - 1) + [0.6]]
    gen.samples_at_temperatures(model, 4, temps, seed=3)
    # z_L = temperature_L * eps first, then every lower group: the same eps in every row.
    assert [row[0][0] for row in seen] == [1.0, 0.5, 0.6]
    assert [t for t, _ in seen[2][1:]] == [0.8] * (len(seen[2]) - 1)
    for row in range(1, 3):
        assert len(seen[row]) == len(seen[0]) > 1
        for (_, a), (_, b) in zip(seen[row], seen[0], strict=True):
            assert torch.equal(a, b)


def test_per_layer_temperature(trained, tiny_run, tmp_path):
    model, _, _ = trained
    L = model.n_layers
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.equal(model.sample(6, [0.7] * L, generator=g()),
                       model.sample(6, 0.7, generator=g()))
    # Only z_L noisy: the image is the prior-mean decoding of z_L = 0.9 * eps.
    only_top = model.sample(6, [0.0] * (L - 1) + [0.9], generator=g())
    eps = torch.randn((6, *model.latent_shape(L)), generator=g())
    assert torch.allclose(only_top, model.to_images(model.generate_from_top(0.9 * eps, 0.0)))
    assert not torch.allclose(only_top, model.sample(6, 0.9, generator=g()))

    # CLI: each --temperature scales the per-layer list; a list of ones changes nothing.
    def cli(name, *extra):
        out = tmp_path / name
        assert main(["sample", str(tiny_run), "-n", "5", "--out", str(out), *extra]) == 0
        return Image.open(out)

    ones = ",".join(["1"] * L)
    a = cli("a.png", "--temperature", "1,0.5")
    b = cli("b.png", "--temperature", "1,0.5", "--layer-temperatures", ones)
    assert a.tobytes() == b.tobytes()
    c = cli("c.png", "--temperature", "1,0.5",
            "--layer-temperatures", ",".join(["1"] * (L - 1) + ["0.5"]))
    assert c.size == a.size and c.tobytes() != a.tobytes()
    assert main(["sample", str(tiny_run), "--layer-temperatures", "1,1",
                 "--out", str(tmp_path / "d.png")]) == 2


def test_interpolation_endpoints_decode_the_posterior_means(trained, x):
    model, _, _ = trained
    L = model.n_layers
    xa, xb = x[:3], x[3:]
    inter = gen.interpolate_top(model, xa, xb, steps=5, temperature=0.0, seed=11)
    mu_a = gen.top_posterior_mean(model, xa, seed=11)
    mu_b = gen.top_posterior_mean(model, xb, seed=11)
    torch.manual_seed(11)  # the seed drives exactly the forward pass's draws
    assert torch.equal(mu_a, model(xa).posteriors[f"z{L}"].mu)
    for col, mu in ((0, mu_a), (-1, mu_b)):
        assert torch.allclose(inter[:, col], model.to_images(model.generate_from_top(mu, 0.0)),
                              atol=1e-6)
    mid = model.to_images(model.generate_from_top((mu_a + mu_b) / 2, 0.0))
    assert torch.allclose(inter[:, 2], mid, atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        gen.interpolate_top(model, xa, xb, steps=1)


def test_grid_writers(trained, x, tmp_path):
    model, _, data = trained
    L = model.n_layers
    p = gen.save_partial_generation_grid(model, x[:3], tmp_path / "p.png", data.kind)
    w, h = Image.open(p).size
    assert w / h == pytest.approx((L + 1) / 3, rel=0.1)   # original, recon, i = 1..L-1
    for path in (gen.save_sample_grid(model, tmp_path / "s.png", data.kind, n=4),
                 gen.save_reconstruction_grid(model, x, tmp_path / "r.png", data.kind),
                 gen.save_interpolation_grid(model, x[:2], x[2:4], tmp_path / "i.png",
                                             data.kind, steps=3)):
        Image.open(path).verify()


# ----------------------------------------------------------------------------- diagnostics
def test_active_units_count(trained):
    model, cfg, data = trained
    valid = evaluation_split(data, "valid", seed=cfg.train.seed)
    batches = [to_model_input(valid.images[i:i + 50], data.kind, cfg.model.bits)
               for i in (0, 50)]
    au = active_units(model, batches)
    total = sum(math.prod(model.latent_shape(model.group_layer(g))) for g in model.group_names)
    assert 0 <= au["active"] <= au["dims"] == total
    assert list(au["per_group"]) == model.group_names
    assert au["threshold"] == ACTIVE_UNIT_THRESHOLD == 0.01

    g = torch.Generator().manual_seed(0)
    means = {"const": torch.full((100, 5), 3.0),
             "wide": torch.randn(100, 4, generator=g),               # variance ~1: active
             "narrow": 0.05 * torch.randn(100, 3, generator=g)}      # variance ~0.0025
    au = active_units_from_means(means)
    assert au["per_group"]["const"] == {"active": 0, "dims": 5}
    assert au["per_group"]["wide"]["active"] == 4
    assert au["per_group"]["narrow"]["active"] == 0
    assert au["active"] == 4 and au["dims"] == 12
    with pytest.raises(ValueError, match="2 examples"):
        active_units_from_means({"z": torch.zeros(1, 3)})


def test_kl_per_epoch_from_a_hand_written_metrics_file(tmp_path):
    recs = [
        {"kind": "train", "step": 2, "epoch": 0, "elbo": -5, "log_px": -4, "kl": 1,
         "kl_groups": {"z1": 1.0, "z2": 2.0}},
        {"kind": "train", "step": 4, "epoch": 0, "elbo": -4, "log_px": -3, "kl": 1,
         "kl_groups": {"z1": 3.0, "z2": 4.0}},
        {"kind": "valid", "step": 4, "valid_elbo": -4.5, "valid_log_px": -4.0,
         "valid_kl_groups": {"z1": 0.25, "z2": 0.25}},
        {"kind": "train", "step": 5, "epoch": 1, "elbo": -3, "log_px": -2, "kl": 1,
         "kl_groups": {"z1": 10.0, "z2": 0.0}},
        {"kind": "train", "step": 8, "epoch": 1, "elbo": -2, "log_px": -1, "kl": 1,
         "kl_groups": {"z1": 2.0, "z2": 4.0}},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for source in (path, tmp_path, recs):
        table = kl_per_epoch(source)
        assert table["epochs"] == [0, 1] and table["groups"] == ["z1", "z2"]
        # Epoch 1: one step at (10, 0), three steps at (2, 4).
        assert table["kl"] == [[2.0, 4.0], [3.0, 3.0]]
    curves = training_curves(path)
    assert curves["train"]["step"] == [2, 4, 5, 8]
    assert curves["train"]["log_px"] == [-4, -3, -2, -1]
    assert curves["valid"] == {"step": [4], "elbo": [-4.5], "log_px": [-4.0], "kl": [0.5]}


def test_validation_records_carry_log_px_and_kl_groups(trained, tiny_run):
    model, cfg, data = trained
    valid_recs = [r for r in read_jsonl(tiny_run / "metrics.jsonl") if r["kind"] == "valid"]
    assert [r["step"] for r in valid_recs] == [4, 8]
    for r in valid_recs:
        assert list(r["valid_kl_groups"]) == model.group_names
        # ELBO = log p(x|z) - KL, one sample per example, averaged.
        assert r["valid_elbo"] == pytest.approx(
            r["valid_log_px"] - sum(r["valid_kl_groups"].values()), abs=1e-4)
    # From the checkpoint: the same numbers as the trainer's ELBO, bit for bit.
    valid = evaluation_split(data, "valid", seed=cfg.train.seed)
    torch.manual_seed(0)
    stats = validation_statistics(model, valid, data.kind, cfg.model.bits, batch_size=64,
                                  max_batches=2)
    torch.manual_seed(0)
    assert stats["elbo"] == validation_elbo(model, valid, data.kind, cfg.model.bits,
                                            batch_size=64, max_batches=2)
    assert stats["n"] == 128
    assert stats["elbo"] == pytest.approx(stats["log_px"] - sum(stats["kl_groups"].values()),
                                          abs=1e-4)
    assert validation_statistics(model, valid, data.kind, cfg.model.bits, batch_size=64,
                                 n_examples=10)["n"] == 10


def test_effective_sample_size(trained, x):
    model, _, _ = trained
    ess = ess_statistics(model, x, 16)
    assert ess["k"] == 16
    assert 1 - 1e-6 <= ess["min"] <= ess["median"] <= ess["max"] <= 16 + 1e-6
    assert 0 < ess["mean_fraction"] <= 1
