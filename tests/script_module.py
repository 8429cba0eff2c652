"""Import a maintainer script (scripts/*.py, a fixture generator) as a module, for the tests
that check what it defines."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(path: Path) -> ModuleType:
    """The module of the Python file at ``path`` (its ``__main__`` block not run)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
