"""Shared pytest fixtures."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real benchmark files: $BIVA_DATA_DIR, else <repo>/../shared/data; skip if absent."""
    env = os.environ.get("BIVA_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"benchmark data folder {path} not found (set BIVA_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The one cached tiny run of the suite: a tiny BIVA (tests/tiny.py) trained 8 steps on 8x8
    digits by `biva train` (seconds); checkpoints at 4 and 8. Tests that write into a run
    copy it first, so that it stays as trained."""
    from tiny import digits_argv

    from biva.cli.main import main

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    args = ["train", *digits_argv("train.steps=8", "train.finetune_steps=2",
                                  "train.eval_every=4", "train.checkpoint_every=4",
                                  "train.log_every=2", "train.batch_size=32"),
            "--run-dir", str(run)]
    assert main(args) == 0
    return run


@pytest.fixture
def poisoned_test_split(monkeypatch):
    """``load_run_data`` as the detector module sees it, patched so that reading a run's *test*
    split (its images, labels or a subset) raises; returns the real loader."""
    import biva.ood.detector as detector
    from biva.data import ImageSplit

    real = detector.load_run_data

    class Untouchable(ImageSplit):
        armed = False

        def __getattribute__(self, name):
            if name in ("images", "labels", "subset") and object.__getattribute__(self, "armed"):
                raise AssertionError("the detector touched the test split")
            return super().__getattribute__(name)

    def poisoned(cfg):
        data = real(cfg)
        data.test = Untouchable(data.test.images)
        data.test.armed = True
        return data

    monkeypatch.setattr(detector, "load_run_data", poisoned)
    return real


def pytest_collection_modifyitems(config, items):
    """Under mutmut (``MUTANT_UNDER_TEST`` set), run the tests marked slow last: with ``-x``
    a mutant then stops at the first fast test that fails, and only survivors pay for the
    brute-force checks. ``MUTATION_DESELECT`` (comma-separated test names) leaves tests out of
    a quick first pass, whose survivors are then re-tested with everything. Normal runs keep
    every test, the longest files first."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        # The longest files start first (pytest-xdist --dist loadfile hands out whole files in
        # this order), by the seconds measured in tests/durations.json (scripts/
        # test_durations.py); a file not measured yet counts 30 s a slow test. A long file
        # starting last kept one worker busy alone for minutes at the end of CI. Within a
        # file the order is kept.
        seconds = _file_seconds(items)
        items.sort(key=lambda item: -seconds[str(item.path)])
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
    names = [n for n in os.environ.get("MUTATION_DESELECT", "").split(",") if n]
    if names:
        dropped = [i for i in items if i.originalname in names]
        items[:] = [i for i in items if i.originalname not in names]
        config.hook.pytest_deselected(items=dropped)



def _file_seconds(items) -> dict[str, float]:
    """Test file path -> its seconds in tests/durations.json, or 30 s per slow test for a file
    not measured yet."""
    root = Path(__file__).resolve().parents[1]
    path = Path(__file__).with_name("durations.json")
    measured = json.loads(path.read_text()) if path.is_file() else {}
    slow = Counter(str(i.path) for i in items if i.get_closest_marker("slow"))
    out = {}
    for item in items:
        rel = Path(item.path).relative_to(root).as_posix()
        out[str(item.path)] = measured.get(rel, 30.0 * slow.get(str(item.path), 0))
    return out
