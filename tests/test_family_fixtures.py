"""Checkpoints written by earlier code still load and give the same bounds (issue 39, item 5).

``tests/fixtures/families/`` holds one tiny trained run of each family (BIVA, LVAE+, LVAE, VAE,
the VDVAE- and NVAE-style models, and the semi-supervised BIVA), written by
``make_fixtures.py`` at the commit recorded in ``expected.json``, with L_1 (and its KL per
group), L_100 and L^{>1}_100 on the first 48 test digits at seed 0. A refactor of the model or
trainer code that changes what a checkpoint computes, renames a parameter, or drops a latent
group fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from script_module import load_script

FIXTURES = Path(__file__).parent / "fixtures" / "families"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def evaluate(run: Path) -> dict:
    """The generator's own evaluation (one definition of what is pinned)."""
    return load_script(FIXTURES / "make_fixtures.py").evaluate(run)


@pytest.mark.parametrize("family", sorted(EXPECTED["families"]))
def test_an_old_checkpoint_gives_the_same_bounds(family, tmp_path):
    run = tmp_path / family
    shutil.copytree(FIXTURES / family, run)
    got = evaluate(run)
    want = EXPECTED["families"][family]
    assert set(got) == set(want)
    assert got["kl_per_group"] == pytest.approx(want["kl_per_group"], abs=1e-5)
    for key in ("L_1", "L_100", "L_gt1_100", "error"):
        if key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-4), key


def test_the_fixtures_cover_every_family():
    from biva.config.model import VARIANTS

    trained = {json.loads((FIXTURES / f / "config.json").read_text())["model"]["variant"]
               for f in EXPECTED["families"]}
    assert trained == set(VARIANTS)
    assert "semi_supervised" in EXPECTED["families"]


@pytest.mark.parametrize("family", ["biva", "nvae", "semi_supervised"])
def test_training_again_gives_the_pinned_weights(family, tmp_path):
    """The trainer (plain, with spectral regularization, semi-supervised) retraces the run
    that wrote the fixture: same config and seed, the same best weights (catches a changed
    order of random draws, batches, schedules, EMA or selection rule)."""
    from biva.config.run import read_run_config
    from biva.training.semi_supervised import trainer_class
    from biva.utils.checkpoint import load_checkpoint

    cfg = read_run_config(FIXTURES / family / "config.json")
    cfg.train.progress = False
    trainer = trainer_class(cfg)(cfg, tmp_path / "run")
    trainer.fit()
    want, want_state = load_checkpoint(FIXTURES / family / "checkpoints" / "best")
    got, got_state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert got_state["step"] == want_state["step"]
    # The fixture's names are those of the code that wrote it.
    want = trainer.model.upgrade_state_dict(want["model"])
    assert set(got["model"]) == set(want)
    for name, tensor in want.items():
        assert torch.allclose(got["model"][name], tensor, atol=1e-5, rtol=1e-4), name
