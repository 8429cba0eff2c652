"""The 2-D densities experiment (appendix D): potentials, the grid KL, the model hook, the CLI."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from biva.cli.main import main
from biva.experiments.densities import (
    AnnealedPotential,
    DensityConfig,
    annealing,
    grid_kl,
    histogram,
    learning_rate,
    model_config,
    potential,
    target_grid,
    target_log_grid,
)
from biva.models import HierarchicalVAE
from biva.models.mlp import as_mlp
from biva.nn.weightnorm import WNConv2d


def _u(index: int, z1: float, z2: float) -> float:
    return float(potential(index, torch.tensor([[z1, z2]], dtype=torch.float64))[0])


def test_potentials_match_hand_computed_values():
    # U1 on the ring, at the origin (0.5 (2/0.4)^2 - log(2 exp(-0.5 (2/0.6)^2))).
    assert _u(1, 2.0, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert _u(1, 0.0, 0.0) == pytest.approx(12.5 + 0.5 * (2 / 0.6) ** 2 - math.log(2), abs=1e-9)
    # U2: on the sine (w1(1) = 1) and 0.4 off it.
    assert _u(2, 1.0, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert _u(2, 0.0, 0.4) == pytest.approx(0.5, abs=1e-9)
    # U3 at the origin: w1 = 0, w2 = 3 exp(-0.5 (1/0.6)^2).
    w2 = 3 * math.exp(-0.5 * (1 / 0.6) ** 2)
    assert _u(3, 0.0, 0.0) == pytest.approx(-math.log(1 + math.exp(-0.5 * (w2 / 0.35) ** 2)))
    # U4 at (1, 0): w1 = 1, w3 = 3 sigmoid(0) = 1.5.
    expected = -math.log(math.exp(-0.5 * (1 / 0.4) ** 2) + math.exp(-0.5 * (0.5 / 0.35) ** 2))
    assert _u(4, 1.0, 0.0) == pytest.approx(expected)
    with pytest.raises(ValueError):
        potential(5, torch.zeros(1, 2))


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_grid_densities_are_normalized(index):
    p = target_grid(index)
    assert p.shape == (100, 100)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert (p > 0).all()
    # [z1, z2] indexing: U2's maximum on the column z1 ~ 1 lies at z2 ~ w1(1) = 1.
    i = np.argmin(np.abs(np.linspace(-1.98, 1.98, 100) - 1.0))
    assert abs(np.linspace(-1.98, 1.98, 100)[np.argmax(target_grid(2)[i])] - 1.0) < 0.05


def _grid_samples(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points drawn from the piecewise-constant grid density p on (-2, 2)^2."""
    flat = rng.choice(p.size, size=n, p=p.ravel())
    i, j = np.unravel_index(flat, p.shape)
    width = 4 / p.shape[0]
    return np.stack([-2 + (i + rng.random(n)) * width, -2 + (j + rng.random(n)) * width], 1)


def test_grid_kl_is_zero_for_the_target_and_positive_otherwise():
    rng = np.random.default_rng(0)
    for index in (1, 3):
        counts, outside = histogram(_grid_samples(target_grid(index), 10**6, rng))
        assert outside == 0 and counts.sum() == 10**6
        # plug-in bias ~ (bins - 1) / (2 N) < 0.005
        assert grid_kl(counts, target_log_grid(index)) < 0.01
    counts, _ = histogram(_grid_samples(target_grid(2), 10**5, rng))
    assert grid_kl(counts, target_log_grid(1)) > 0.5
    # samples outside the box are excluded, empty bins contribute nothing
    counts, outside = histogram(np.array([[0.01, 0.01], [5.0, 0.0]]))
    assert outside == 1
    log_p = np.full((100, 100), -math.log(10**4))
    assert grid_kl(counts, log_p) == pytest.approx(math.log(10**4))


def test_schedules():
    cfg = DensityConfig()
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(1000, cfg) == pytest.approx(3e-3)
    assert learning_rate(cfg.iterations - 1, cfg) == pytest.approx(1e-5)
    assert annealing(0, cfg) == pytest.approx(0.1)
    assert annealing(2500, cfg) == pytest.approx(0.55)
    assert annealing(5000, cfg) == annealing(9999, cfg) == 1.0
    prior = AnnealedPotential(1, extent=2.0, wall=0.05, bins=200)
    log_z = prior.log_partition(0.5)
    z = torch.tensor([[2.0, 0.0], [2.1, -2.2]])
    lp = prior.log_prior(0.5)(z)
    assert float(lp[0]) == pytest.approx(-0.5 * _u(1, 2.0, 0.0) - log_z, abs=1e-5)
    wall = 0.5 * ((0.1 / 0.05) ** 2 + (0.2 / 0.05) ** 2)
    assert float(lp[1]) == pytest.approx(-0.5 * _u(1, 2.1, -2.2) - wall - log_z, abs=1e-4)


@pytest.mark.parametrize("index", [1, 2, 3, 4])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_walled_prior_integrates_to_one_and_keeps_its_mass_in_the_box(index, beta):
    # An independent quadrature (finer midpoint grid over a wider square) of exp(log_prior).
    prior = AnnealedPotential(index, extent=2.0, wall=0.05)
    n, half = 1200, 3.0
    c = torch.linspace(-half, half, n + 1, dtype=torch.float64)
    c = (c[:-1] + c[1:]) / 2
    z = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    p = prior.log_prior(beta)(z).double().exp() * (2 * half / n) ** 2
    assert float(p.sum()) == pytest.approx(1.0, abs=0.01)
    inside = (z.abs() < 2.0).all(-1)
    assert float(p[inside].sum()) > 0.9  # U1's ring meets the box: some mass sits in the wall
    # Without the wall, U2 is flat along z1: most of Z's box (-4, 4)^2 lies outside (-2, 2)^2.
    if index == 2:
        free = AnnealedPotential(2, wall=0.0)
        pf = free.log_prior(beta)(z).double().exp() * (2 * half / n) ** 2
        assert float(pf[inside].sum()) < 0.55


def test_top_log_prior_hook_and_mlp_conversion():
    torch.manual_seed(0)
    cfg = replace(DensityConfig(), hidden=16, layers=3)
    model = HierarchicalVAE(model_config("biva", cfg))
    # Off-centre taps never meet a 1x1 map; zeroed, they no longer enter the weight norm, so the
    # dense conversion must give the same function.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WNConv2d) and m.v.shape[-1] > 1:
                centre = m.v[:, :, m.v.shape[-1] // 2, m.v.shape[-1] // 2].clone()
                m.v.zero_()
                m.v[:, :, m.v.shape[-1] // 2, m.v.shape[-1] // 2] = centre
    mlp = as_mlp(copy.deepcopy(model))
    assert not any(isinstance(m, WNConv2d) for m in mlp.modules())
    x = torch.randn(8, 2, 1, 1)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    b = mlp(x)
    torch.manual_seed(1)
    c = mlp(x, top_log_prior=None)
    torch.testing.assert_close(a.log_weight, b.log_weight, rtol=1e-5, atol=1e-5)
    assert torch.equal(b.log_weight, c.log_weight)  # None is the standard normal, bit for bit
    torch.manual_seed(1)
    d = mlp(x, top_log_prior=lambda z: -potential(1, z))
    z_top = d.latents["z3"]
    expected = b.kl[:, -1] + (-0.5 * (z_top**2 + math.log(2 * math.pi))).sum(1) \
        + potential(1, z_top)
    torch.testing.assert_close(d.kl[:, -1], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.kl[:, :-1], b.kl[:, :-1])


def test_quick_cli_run_writes_json_and_figures(tmp_path, capsys):
    out = tmp_path / "dens"
    args = ["densities", "--variants", "biva", "--potentials", "2", "--seeds", "1", "--quick",
            "--iterations", "6", "--eval-samples", "3000", "--batch-size", "64",
            "--jobs", "1", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["model"] == "biva" and run["potential"] == 2 and math.isfinite(run["kl"])
    assert run["device"] == "cpu"
    assert results["summary"]["biva"]["U2"]["median"] == run["kl"]
    assert (out / "densities.png").stat().st_size > 0
    assert (out / "kl_boxplot.png").stat().st_size > 0
    assert "U2" in capsys.readouterr().out
    # A rerun reuses the finished run instead of training again.
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == [run]


@pytest.mark.slow
def test_parallel_workers(tmp_path):
    out = tmp_path / "par"
    assert main(["densities", "--variants", "vae,lvae", "--potentials", "1", "--seeds", "1",
                 "--iterations", "3", "--eval-samples", "500", "--batch-size", "32",
                 "--jobs", "2", "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["vae", "lvae"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CUDA-less torch")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main(["densities", "--variants", "vae", "--potentials", "1", "--seeds", "1", "--quick",
                 "--device", "cuda", "--jobs", "1", "--out", str(tmp_path / "d")]) == 2
    assert "--device cuda: this torch has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
