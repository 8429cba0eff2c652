"""Shared pytest fixtures."""

from __future__ import annotations

import os
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
