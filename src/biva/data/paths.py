"""Where datasets live on disk."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "BIVA_DATA_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/biva/data")


def _sibling_shared_data() -> Path | None:
    # A source checkout keeps the benchmark copies next to the repository: <repo>/../shared/data.
    # Only trust that when this file really sits in <repo>/src/biva/data (not site-packages).
    repo = Path(__file__).resolve().parents[3]
    if not (repo / "pyproject.toml").is_file():
        return None
    candidate = repo.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root folder: ``root`` > ``$BIVA_DATA_DIR`` > ``<repo>/../shared/data`` if it
    exists > ``~/.cache/biva/data``. The folder is not created here."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    shared = _sibling_shared_data()
    if shared is not None:
        return shared
    return DEFAULT_CACHE_DIR.expanduser()
