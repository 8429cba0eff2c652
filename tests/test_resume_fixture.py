"""A step checkpoint written by earlier code resumes to the weights the uninterrupted run
reached (``tests/fixtures/resume``, written by its ``make_fixture.py``).

Catches what the bound fixtures cannot: the optimizer's moments are stored by parameter
position, so a change of the model's parameter order (or names) that the resume does not map
back gives each Adamax moment to another tensor, and the resumed run drifts away.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures" / "resume"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("family", EXPECTED["families"])
def test_an_old_step_checkpoint_resumes_to_the_same_weights(family, tmp_path):
    from biva.training.semi_supervised import resume_trainer
    from biva.utils.checkpoint import load_checkpoint

    run = tmp_path / family
    shutil.copytree(FIXTURES / family, run)
    trainer = resume_trainer(run)
    assert trainer.step == int(EXPECTED["resumed_from"].split("_")[1])
    trainer.fit()
    got, state = load_checkpoint(run / "checkpoints" / f"step_{EXPECTED['final_step']:09d}")
    assert state["step"] == EXPECTED["final_step"]
    want = trainer.model.upgrade_state_dict(load_file(str(FIXTURES / family /
                                                           "final.safetensors")))
    assert set(got["model"]) == set(want)
    for name, tensor in want.items():
        assert torch.allclose(got["model"][name], tensor, atol=1e-5, rtol=1e-4), name


def test_optimizer_moments_follow_their_parameters_by_name():
    """A state saved in one parameter order gives each parameter its own moments in another;
    a state for other parameters is refused, naming them."""
    from biva.training.state import in_parameter_order

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    saved_opt = torch.optim.Adamax([a, b])
    a.grad, b.grad = torch.ones(2), -torch.ones(3)
    saved_opt.step()
    state = saved_opt.state_dict()            # saved with the order ["a", "b"]
    a2, b2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adamax([b2, a2])        # the current order: ["b", "a"]
    opt.load_state_dict(in_parameter_order(state, ["a", "b"], ["b", "a"]))
    assert torch.equal(opt.state[a2]["exp_avg"], saved_opt.state[a]["exp_avg"])
    assert torch.equal(opt.state[b2]["exp_inf"], saved_opt.state[b]["exp_inf"])
    with pytest.raises(ValueError, match=r"missing \['c'\], unknown \['b'\]"):
        in_parameter_order(state, ["a", "b"], ["a", "c"])
