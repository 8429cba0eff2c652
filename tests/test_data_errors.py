"""Corrupt, malicious or incomplete inputs raise DatasetError naming the file and the facts."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import scipy.io
from test_data_formats import write_fake_mnist

from biva.data import KNOWN_FILES, DatasetError, load_dataset, verify_file
from biva.data.formats import read_amat, read_idx


def test_missing_files_say_what_and_how(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg
    assert "download=True" in msg and "biva download mnist" in msg


def test_missing_folder_dataset_cannot_download(tmp_path):
    with pytest.raises(DatasetError, match="cannot be downloaded"):
        load_dataset("celeba64", tmp_path)


def test_truncated_gzip(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    target = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    for verify in (False, True):
        with pytest.raises(DatasetError) as info:
            load_dataset("mnist", tmp_path, verify=verify)
        msg = str(info.value)
        assert "train-images-idx3-ubyte.gz" in msg and "truncated" in msg


def test_not_a_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"plain text, not gzip")
    with pytest.raises(DatasetError, match=r"x-idx1-ubyte\.gz: not a gzip file.*1f 8b.*70 6c"):
        read_idx(path)


def _idx_bytes(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(0x0804, (1, 28, 28, 1), bytes(784)))
    with pytest.raises(DatasetError) as info:
        read_idx(path, (28, 28))
    msg = str(info.value)
    assert path.name in msg and "expected 2051" in msg and "found 2052" in msg


def test_idx_wrong_dimensions_and_size(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(_idx_bytes(0x0803, (2, 27, 28), bytes(2 * 27 * 28)))
    with pytest.raises(DatasetError, match=r"idx3-ubyte: wrong IDX dimensions.*\(2, 27, 28\)"):
        read_idx(path, (28, 28))
    path.write_bytes(_idx_bytes(0x0803, (5, 28, 28), bytes(4 * 784)))
    with pytest.raises(DatasetError) as info:
        read_idx(path, (28, 28))
    msg = str(info.value)
    assert "size mismatch" in msg and str(16 + 5 * 784) in msg and str(16 + 4 * 784) in msg


def test_idx_image_label_count_mismatch(tmp_path):
    write_fake_mnist(tmp_path / "mnist", n_train=12)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(0x0801, (11,), bytes(11))))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz.*expected 12.*found 11"):
        load_dataset("mnist", tmp_path, verify=False)


def _amat(rows) -> str:
    return "\n".join(" ".join(r) for r in rows) + "\n"


def test_amat_wrong_value_count(tmp_path):
    good = ["0"] * 784
    path = tmp_path / "binarized_mnist_valid.amat"
    path.write_text(_amat([good, good, ["1"] * 783]))
    with pytest.raises(DatasetError) as info:
        read_amat(path)
    msg = str(info.value)
    assert path.name in msg and "line 3" in msg and "784" in msg and "783" in msg


def test_amat_non_binary_value(tmp_path):
    bad = ["0"] * 784
    bad[10] = "2"
    path = tmp_path / "binarized_mnist_test.amat.gz"
    path.write_bytes(gzip.compress(_amat([["1"] * 784, bad]).encode()))
    with pytest.raises(DatasetError) as info:
        read_amat(path)
    msg = str(info.value)
    assert path.name in msg and "line 2" in msg and "value 11" in msg and "'2'" in msg


def test_checksum_mismatch(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte.gz" in msg
    known = KNOWN_FILES["mnist/train-images-idx3-ubyte.gz"]
    assert known.sha256[0] in msg and known.md5[0] in msg and "found sha256" in msg
    assert "verify=False" in msg
    load_dataset("mnist", tmp_path, verify=False, valid_size=2)  # the content itself is fine


def test_checksum_is_memoised(tmp_path, shared_data_dir):
    from biva.data.checksums import _file_digests

    path = shared_data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if not path.is_file():
        pytest.skip("shared MNIST not available")
    verify_file(path, "mnist/t10k-labels-idx1-ubyte.gz")
    misses = _file_digests.cache_info().misses
    assert verify_file(path, "mnist/t10k-labels-idx1-ubyte.gz") is True
    assert _file_digests.cache_info().misses == misses  # answered without re-hashing


def test_checksum_unknown_file_is_not_verified(tmp_path):
    path = tmp_path / "something.bin"
    path.write_bytes(b"abc")
    assert verify_file(path, "nobody/something.bin") is False


def test_checksum_memo_sees_rewritten_file(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError):
        verify_file(path, "mnist/t10k-labels-idx1-ubyte.gz")
    # A file changing size or mtime is hashed again, never answered from the memo.
    path.write_bytes(b"x" * 10)
    os.utime(path, ns=(1, 1))
    with pytest.raises(DatasetError, match="not a gzip|corrupt|mismatch"):
        verify_file(path, "mnist/t10k-labels-idx1-ubyte.gz")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "eval", "numpy.load"])
def test_pickle_refuses_code(tmp_path, payload):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = {b"data": _Exploit(marker), b"labels": [0]}
    elif payload == "eval":
        evil = {b"data": _Reduce(eval, (f"open({str(marker)!r}, 'w')",)), b"labels": [0]}
    else:
        evil = {b"data": _Reduce(np.load, (str(marker),)), b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=4))
    for name in ["data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                                  b"labels": [0]}))
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", tmp_path, verify=False)
    msg = str(info.value)
    assert "data_batch_1" in msg and "refusing" in msg
    assert {"os.system": "system", "eval": "builtins.eval", "numpy.load": "load"}[payload] in msg
    assert not marker.exists()


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_cifar_wrong_content(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                  b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"data_batch_1: b'data'.*\(N, 3072\).*\(2, 100\)"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_cifar_checksum_mismatch(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                                  b"labels": [0]}))
    with pytest.raises(DatasetError, match=r"data_batch_1.*c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", tmp_path)


def test_mat_missing_key(tmp_path):
    (tmp_path / "svhn").mkdir()
    x = np.zeros((32, 32, 3, 2), np.uint8)
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": x})
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": np.ones((2, 1))})
    with pytest.raises(DatasetError) as info:
        load_dataset("svhn", tmp_path, verify=False)
    msg = str(info.value)
    assert "train_32x32.mat" in msg and "['y']" in msg and "found ['X']" in msg


def test_omniglot_missing_key(tmp_path):
    (tmp_path / "omniglot").mkdir()
    scipy.io.savemat(tmp_path / "omniglot" / "chardata.mat", {"data": np.zeros((784, 3))})
    with pytest.raises(DatasetError, match=r"chardata\.mat: missing variable.*testdata"):
        load_dataset("omniglot", tmp_path)


def test_not_a_mat_file(tmp_path):
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "chardata.mat").write_bytes(b"\x00" * 50)
    with pytest.raises(DatasetError, match=r"chardata\.mat: cannot read \.mat"):
        load_dataset("omniglot", tmp_path)


def test_npz_without_images(tmp_path):
    np.savez(tmp_path / "weird.npz", foo=np.zeros((3, 4, 4)), bar=np.zeros(3))
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", path=tmp_path / "weird.npz")
    msg = str(info.value)
    assert "weird.npz" in msg and "'images'" in msg and "['bar', 'foo']" in msg


def test_npz_bad_values(tmp_path):
    np.savez(tmp_path / "neg.npz", images=np.full((4, 1, 2, 2), -3, dtype=np.int16))
    with pytest.raises(DatasetError, match=r"neg\.npz.*0\.\.255, found -3\.\.-3"):
        load_dataset("npz", path=tmp_path / "neg.npz")
    np.savez(tmp_path / "big.npz", images=np.full((4, 1, 2, 2), 2.5))
    with pytest.raises(DatasetError, match=r"big\.npz.*\[0, 1\], found 2\.5"):
        load_dataset("npz", path=tmp_path / "big.npz")


def test_unreadable_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.new("L", (3, 3)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=r"b\.png: unreadable image"):
        load_dataset("folder", path=folder)


def test_image_size_mismatch(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (3, 3)).save(folder / "a.png")
    Image.new("L", (4, 3)).save(folder / "b.png")
    with pytest.raises(DatasetError, match=r"b\.png: image size 4x3 differs.*3x3.*image_size="):
        load_dataset("folder", path=folder)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist2")
    with pytest.raises(ValueError, match="path="):
        load_dataset("folder")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=4)


@pytest.mark.parametrize("bad,match", [
    (9000, r"train labels must be the class indices 0\.\.C-1 .* relabel them 0\.\.10"),
    (-1, r"train labels must be class indices >= 0; found negative values \[-1\]"),
])
def test_stray_npz_labels_are_refused_naming_the_file(tmp_path, bad, match):
    """One label 9000 among digits once sized a 9001-class model (18 GB, then killed); a
    negative one made the data 'unlabelled'."""
    from biva.data import load_dataset

    y = np.arange(100) % 10
    y[7] = bad
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((100, 1, 8, 8), np.uint8), labels=y)
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_test_labels_outside_the_training_classes_are_refused(tmp_path):
    from biva.data import load_dataset

    np.savez(tmp_path / "train.npz", images=np.zeros((20, 1, 8, 8), np.uint8),
             labels=np.arange(20) % 4)
    np.savez(tmp_path / "test.npz", images=np.zeros((5, 1, 8, 8), np.uint8),
             labels=np.array([0, 1, 2, 3, 7]))
    with pytest.raises(DatasetError, match=r"test labels \[7\] are not among the 4 classes"):
        load_dataset("npz", path=tmp_path)


@pytest.mark.parametrize("huge", [10**8, 2**40])
def test_a_huge_stray_label_is_refused_in_memory_independent_of_its_size(tmp_path, huge):
    """10^8 once took 9 GB (a set of range(count)) and ended in an empty error line; 2^40
    never finished. Now the check reads the distinct values alone."""
    import tracemalloc

    from biva.data import load_dataset

    y = np.arange(100) % 10
    y[7] = huge
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((100, 1, 8, 8), np.uint8), labels=y)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError,
                           match=rf"up to {huge} \(classes \[10, 11, 12, 13, 14\] have") as info:
            load_dataset("npz", path=path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB to refuse 100 labels"
