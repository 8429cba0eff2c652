"""The tiny runs the tests train, from one factory: 8x8 digits, 8 filters and one block a
stage, one thread, no progress bar, one validation batch (seconds on one core). Each test file
adds only what its checks need (step counts, log and checkpoint intervals, batch sizes)."""

from __future__ import annotations

from biva.config import RunConfig, load_run_config

#: The overrides every tiny run shares (with one block a stage for the BIVA family: see
#: :func:`base`).
BASE = ("model.filters=[8]", "train.progress=false", "train.init_batch=64",
        "train.threads=1", "train.eval_batches=1")


def base(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """BASE, plus ``model.blocks=1`` unless ``overrides`` switch to a top-down variant (whose
    depth is its spec: it has no ``model.blocks``)."""
    topdown = any(o.replace(" ", "") in ("model.variant=vdvae", "model.variant=nvae")
                  for o in overrides)
    return BASE if topdown else (*BASE, "model.blocks=1")


def digits_config(*overrides: str, steps: int) -> RunConfig:
    """The shipped ``digits`` config made tiny, trained ``steps`` steps, then ``overrides``."""
    return load_run_config("digits", [*base(overrides), f"train.steps={steps}", *overrides])


def digits_argv(*overrides: str) -> list[str]:
    """The same tiny run as ``biva train`` options (``--config digits --set ...``)."""
    argv = ["--config", "digits"]
    for s in (*base(overrides), *overrides):
        argv += ["--set", s]
    return argv
