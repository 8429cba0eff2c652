"""Where the data root is looked for."""

from __future__ import annotations

from pathlib import Path

from biva.data import DEFAULT_CACHE_DIR, resolve_data_root
from biva.data import paths as paths_module


def test_explicit_root_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("BIVA_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "mine") == tmp_path / "mine"


def test_env_var_next(monkeypatch, tmp_path):
    monkeypatch.setenv("BIVA_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"


def test_repo_sibling_then_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("BIVA_DATA_DIR", raising=False)
    monkeypatch.setattr(paths_module, "_sibling_shared_data", lambda: tmp_path)
    assert resolve_data_root() == tmp_path
    monkeypatch.setattr(paths_module, "_sibling_shared_data", lambda: None)
    assert resolve_data_root() == DEFAULT_CACHE_DIR.expanduser()
    assert resolve_data_root() == Path.home() / ".cache" / "biva" / "data"


def test_source_checkout_finds_shared_data():
    repo = Path(paths_module.__file__).resolve().parents[3]
    expected = repo.parent / "shared" / "data"
    if expected.is_dir():
        assert paths_module._sibling_shared_data() == expected
