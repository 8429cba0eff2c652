"""The atomic download helper, exercised with file:// URLs only (no network)."""

from __future__ import annotations

import gzip

import pytest

from biva.data import DatasetError, fetch_url
from biva.data.download import download


def test_fetch_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    dest = tmp_path / "out" / "copy.bin"
    assert fetch_url(src.as_uri(), dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "fake.gz"
    src.write_bytes(gzip.compress(b"not the MNIST labels"))
    dest = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch_url(src.as_uri(), dest, key="mnist/t10k-labels-idx1-ubyte.gz")
    assert list(dest.parent.iterdir()) == []


def test_fetch_missing_source(tmp_path):
    dest = tmp_path / "d" / "x.bin"
    with pytest.raises(DatasetError, match="download of .*nope.bin"):
        fetch_url((tmp_path / "nope.bin").as_uri(), dest)
    assert list(dest.parent.iterdir()) == []


def test_manual_datasets_explain(tmp_path):
    with pytest.raises(DatasetError, match="image-net.org"):
        download("imagenet32", tmp_path)
