"""The posterior flows (model.posterior_flows): each step autoregressive in raster order, its
log-determinant equal to the Jacobian's, and the option wired through config and model. The
bound with flows is checked against the brute-force marginal in
tests/bounds/test_bound_exact_flows.py."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from biva.config import ConfigError
from biva.config.presets import preset
from biva.models import build_hierarchy
from biva.nn.flows import IAFStep, PosteriorFlow


def _random_flow(steps: int, z_ch: int = 2, ctx_ch: int = 3) -> PosteriorFlow:
    torch.manual_seed(0)
    flow = PosteriorFlow(z_ch, ctx_ch, 6, steps)
    with torch.no_grad():   # the zero-initialized output layers made non-trivial
        for step in flow.steps:
            step.out.weight.normal_(0, 0.5)
            step.out.bias.normal_(0, 0.5)
    return flow.double()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_log_det_is_the_jacobians(steps):
    flow = _random_flow(steps)
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    ctx = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    jac = jacobian(lambda v: flow(v.view(1, 2, 3, 3), ctx)[0].double().flatten(),
                   z.flatten())
    sign, logabs = torch.linalg.slogdet(jac)
    _, log_det = flow(z, ctx)
    assert sign > 0
    torch.testing.assert_close(log_det.double(), logabs.view(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_step_reads_only_the_positions_before_in_its_order(reverse):
    """d z'_p / d z_q = 0 for positions q after p (in the step's order), and at q = p a
    diagonal block: the Jacobian is triangular, so its determinant is the product of g."""
    torch.manual_seed(1)
    step = IAFStep(2, 3, 6, reverse=reverse).double()
    with torch.no_grad():
        step.out.weight.normal_(0, 0.5)
    z = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    ctx = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    jac = jacobian(lambda v: step(v.view(1, 2, 4, 4), ctx)[0].double().flatten(),
                   z.flatten()).view(2, 16, 2, 16)
    order = torch.arange(16).flip(0) if reverse else torch.arange(16)
    rank = torch.empty(16, dtype=torch.long)
    rank[order] = torch.arange(16)
    for p in range(16):
        for q in range(16):
            block = jac[:, p, :, q]
            if rank[q] > rank[p]:
                assert torch.all(block == 0), (p, q)
            elif q == p:
                assert torch.all(block - torch.diag(torch.diagonal(block)) == 0)
    assert jac[:, 5, :, 0].abs().sum() > 0 or reverse   # it does read earlier positions


def test_zero_flows_keep_the_model_and_flows_add_parameters_per_group():
    plain = build_hierarchy(preset("nvae-binary-cpu"))
    flows = build_hierarchy(preset("nvae-binary-cpu", posterior_flows=2))
    names = {n for n, _ in plain.named_parameters()}
    extra = {n for n, _ in flows.named_parameters()} - names
    assert names <= {n for n, _ in flows.named_parameters()}
    assert {n.split(".flow.")[0] for n in extra} == {f"blocks.{i}" for i in range(6)}
    assert all(".flow.steps." in n for n in extra)


def test_the_option_is_checked_and_kept_to_the_top_down_families():
    with pytest.raises(ConfigError, match="model.posterior_flows: not a field of HierarchyConfig"):
        preset("binary-cpu", posterior_flows=1)
    with pytest.raises(ConfigError, match="model.posterior_flows: expected an int >= 0"):
        preset("nvae-binary-cpu", posterior_flows=-1)
    assert preset("nvae-cifar10-flows").posterior_flows == 2
    assert preset("nvae-binary-cpu-flows").posterior_flows == 2
