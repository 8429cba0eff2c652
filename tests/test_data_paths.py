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


def test_a_relative_folder_is_found_here_first_then_under_the_data_root(monkeypatch, tmp_path):
    """A shipped pretrained model names its data folder relative to the data root
    ("photos32"): it must load from any working directory, and a folder of that name in the
    working directory still wins."""
    import numpy as np
    from PIL import Image

    from biva.data import load_dataset

    def folder(at: Path, value: int) -> None:
        at.mkdir(parents=True)
        for i in range(20):
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(at / f"{i:02d}.png")

    folder(tmp_path / "root" / "pics", 10)
    monkeypatch.chdir(tmp_path)
    data = load_dataset("folder", tmp_path / "root", path="pics")
    assert int(data.train.images.max()) == 10
    folder(tmp_path / "pics", 200)
    assert int(load_dataset("folder", tmp_path / "root", path="pics").train.images.max()) == 200
    import pytest

    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        load_dataset("folder", tmp_path / "root", path="nowhere")
