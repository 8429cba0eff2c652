"""The real benchmark files in ../shared/data load with the right shapes, values and counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biva.data import KNOWN_FILES, load_dataset, verify_file

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    return folder


@pytest.fixture(scope="module")
def mnist(shared_data_dir):
    _need(shared_data_dir / "mnist")
    return load_dataset("mnist", shared_data_dir)


@pytest.fixture(scope="module")
def fashion(shared_data_dir):
    _need(shared_data_dir / "fashion_mnist")
    return load_dataset("fashion_mnist", shared_data_dir)


@pytest.fixture(scope="module")
def bmnist(shared_data_dir):
    _need(shared_data_dir / "binarized_mnist")
    return load_dataset("binarized_mnist", shared_data_dir)


def _class_counts(*labels: torch.Tensor) -> list[int]:
    return torch.bincount(torch.cat(labels), minlength=10).tolist()


def test_sha256sums_match_table_and_files(shared_data_dir):
    sums = (shared_data_dir / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in sums if line.strip()]
    assert len(entries) == 11
    for digest, rel in entries:
        assert digest in KNOWN_FILES[rel].sha256, rel
        assert verify_file(shared_data_dir / rel, rel) is True


def test_mnist(mnist):
    assert (mnist.kind, mnist.binarization, mnist.num_classes) == ("8bit", None, 10)
    assert mnist.shape == (1, 28, 28)
    assert (len(mnist.train), len(mnist.valid), len(mnist.test)) == (55000, 5000, 10000)
    for split in (mnist.train, mnist.valid, mnist.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert int(mnist.train.images.min()) == 0 and int(mnist.train.images.max()) == 255
    # The valid split is carved from the 60k training images: together they give the
    # standard per-class counts of the official training set.
    assert _class_counts(mnist.train.labels, mnist.valid.labels) == MNIST_TRAIN_COUNTS
    assert _class_counts(mnist.test.labels) == MNIST_TEST_COUNTS


def test_mnist_valid_is_seeded_and_disjoint(shared_data_dir, mnist):
    again = load_dataset("mnist", shared_data_dir, valid_size=1000, seed=0)
    other = load_dataset("mnist", shared_data_dir, valid_size=1000, seed=1)
    assert len(again.valid) == 1000 and len(again.train) == 59000
    assert not torch.equal(again.valid.images, other.valid.images)
    # Whatever the valid size, train + valid is the whole official training file.
    pool = torch.cat([mnist.train.images, mnist.valid.images]).flatten(1)
    pool2 = torch.cat([again.train.images, again.valid.images]).flatten(1)
    assert torch.equal(pool.sum(0), pool2.sum(0))


def test_mnist_binarizations(shared_data_dir, mnist):
    dyn = load_dataset("mnist", shared_data_dir, binarization="dynamic")
    assert (dyn.kind, dyn.binarization) == ("binary", "dynamic")
    assert dyn.test.images.dtype == torch.float32
    assert torch.equal(dyn.test.images, mnist.test.images.float() / 255.0)
    static = load_dataset("mnist", shared_data_dir, binarization="static", seed=3)
    assert (static.kind, static.binarization) == ("binary", "static")
    assert static.test.images.dtype == torch.uint8
    assert set(static.test.images.unique().tolist()) == {0, 1}
    # A Bernoulli draw: black pixels stay 0, white pixels stay 1, the mean matches.
    assert int(static.test.images[mnist.test.images == 0].max()) == 0
    assert int(static.test.images[mnist.test.images == 255].min()) == 1
    assert abs(static.test.images.float().mean() - dyn.test.images.mean()) < 2e-3


def test_fashion_mnist(fashion):
    assert (fashion.kind, fashion.num_classes) == ("8bit", 10)
    assert (len(fashion.train), len(fashion.valid), len(fashion.test)) == (55000, 5000, 10000)
    assert fashion.train.images.dtype == torch.uint8 and fashion.shape == (1, 28, 28)
    assert _class_counts(fashion.train.labels, fashion.valid.labels) == [6000] * 10
    assert _class_counts(fashion.test.labels) == [1000] * 10
    assert fashion.class_names[0] == "T-shirt/top" and len(fashion.class_names) == 10


def test_binarized_mnist(bmnist):
    assert (bmnist.kind, bmnist.binarization, bmnist.num_classes) == ("binary", "static", None)
    assert (len(bmnist.train), len(bmnist.valid), len(bmnist.test)) == (50000, 10000, 10000)
    for split in (bmnist.train, bmnist.valid, bmnist.test):
        assert split.images.dtype == torch.uint8 and split.labels is None
        assert split.images.shape[1:] == (1, 28, 28)
        assert set(split.images.unique().tolist()) == {0, 1}
    # Binarized MNIST is sparse: about 13 % of pixels are on.
    assert 0.10 < bmnist.train.images.float().mean() < 0.16


def test_binarized_mnist_merge_valid(shared_data_dir, bmnist):
    merged = load_dataset("binarized_mnist", shared_data_dir, merge_valid=True, valid_size=0)
    assert (len(merged.train), len(merged.valid), len(merged.test)) == (60000, 0, 10000)
    assert merged.valid.images.shape == (0, 1, 28, 28)
    assert torch.equal(merged.train.images[:50000], bmnist.train.images)
    assert torch.equal(merged.train.images[50000:], bmnist.valid.images)
    carved = load_dataset("binarized_mnist", shared_data_dir, merge_valid=True)
    assert (len(carved.train), len(carved.valid)) == (59000, 1000)
    assert torch.equal(carved.test.images, bmnist.test.images)
    with pytest.raises(ValueError, match="merge_valid"):
        load_dataset("binarized_mnist", shared_data_dir, valid_size=100)
    with pytest.raises(ValueError, match="binarization"):
        load_dataset("binarized_mnist", shared_data_dir, binarization="dynamic")
