"""The committed weights of the brute-force bound tests' tiny models are what their recipes
train (``tests/fixtures/brute_force/make_models.py``): extended tier, since retraining all of
them is what the committed weights spare CI."""

from __future__ import annotations

import pytest
import torch
from brute_force import WEIGHTS
from safetensors.torch import load_file

pytestmark = pytest.mark.extended


def _recipes():
    from script_module import load_script

    return load_script(WEIGHTS / "make_models.py").recipes()


@pytest.mark.parametrize("name", sorted(_recipes()))
def test_committed_weights_are_what_the_recipe_trains(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _recipes()[name]()
    finally:
        torch.set_num_threads(threads)
    want = load_file(str(WEIGHTS / f"{name}.safetensors"))
    got = model.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.allclose(got[key], tensor, atol=1e-5, rtol=1e-4), key
