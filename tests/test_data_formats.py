"""Loaders for datasets not shipped with the project, on small files written in the real format."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from biva.data import ImageSplit, load_dataset
from biva.data.registry import CELEBA_CROP


def _idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fake_mnist(folder, n_train=12, n_test=6, seed=0, gz=True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, arr in arrays.items():
        _idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path / "mnist", gz=gz)
    d = load_dataset("mnist", tmp_path, valid_size=0, verify=False)
    assert d.kind == "8bit" and d.shape == (1, 28, 28)
    assert np.array_equal(d.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(d.train.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(d.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(d.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_valid_carving_partitions_train(tmp_path):
    arrays = write_fake_mnist(tmp_path / "mnist", n_train=40)
    d = load_dataset("mnist", tmp_path, valid_size=10, verify=False, seed=5)
    assert (len(d.train), len(d.valid)) == (30, 10)
    pool = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8))
    rows = {bytes(x.numpy()) for x in pool}
    got = [bytes(x[0].numpy()) for x in torch.cat([d.train.images, d.valid.images])]
    assert sorted(got) == sorted(rows) and len(set(got)) == 40
    again = load_dataset("mnist", tmp_path, valid_size=0.25, verify=False, seed=5)
    assert torch.equal(again.valid.images, d.valid.images)
    with pytest.raises(ValueError, match="no training data"):
        load_dataset("mnist", tmp_path, valid_size=40, verify=False)


def test_binarized_mnist_plain_amat(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    data = {}
    for split, n in (("train", 5), ("valid", 3), ("test", 4)):
        data[split] = rng.integers(0, 2, (n, 784))
        text = "\n".join(" ".join(map(str, row)) for row in data[split]) + "\n"
        (folder / f"binarized_mnist_{split}.amat").write_text(text)
    # Non-canonical whitespace (CRLF, tabs) goes through the slow parser and still loads.
    (folder / "binarized_mnist_test.amat").write_text(
        "\r\n".join("\t".join(map(str, row)) + " " for row in data["test"]) + "\r\n"
    )
    d = load_dataset("binarized_mnist", tmp_path, verify=False)
    for split in ("train", "valid", "test"):
        got = getattr(d, split).images.reshape(-1, 784).numpy()
        assert np.array_equal(got, data[split]), split


def test_digits_splits_and_binarization():
    d = load_dataset("digits")
    assert (len(d.train), len(d.valid), len(d.test)) == (1350, 150, 297)
    assert (d.kind, d.binarization, d.shape, d.num_classes) == ("binary", "dynamic", (1, 8, 8), 10)
    assert d.train.images.dtype == torch.float32 and float(d.train.images.max()) == 1.0
    assert torch.equal(d.train.images * 16, torch.round(d.train.images * 16))
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(same.test.images, d.test.images)
    assert not torch.equal(other.test.images, d.test.images)
    static = load_dataset("digits", binarization="static", seed=2)
    assert static.binarization == "static" and static.test.images.dtype == torch.uint8
    assert set(static.train.images.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="binarization"):
        load_dataset("digits", binarization="none")


def test_omniglot_iwae_layout(tmp_path):
    rng = np.random.default_rng(1)
    n_train, n_test = 7, 5
    images = {"data": rng.random((n_train, 28, 28)), "testdata": rng.random((n_test, 28, 28))}
    images["data"][:, 0, 1] = 1.0  # asymmetric: a transposition bug would move this pixel
    images["data"][:, 1, 0] = 0.0
    labels = {"target": rng.integers(0, 50, n_train), "testtarget": rng.integers(0, 50, n_test)}
    mat = {}
    for key, imgs in images.items():
        # IWAE's chardata.mat: 784 x N, each image flattened column-major (MATLAB order).
        mat[key] = np.stack([im.flatten(order="F") for im in imgs], axis=1)
    for key, y in labels.items():
        mat[key] = np.eye(50)[y].T  # one-hot, 50 x N
    (tmp_path / "omniglot").mkdir()
    scipy.io.savemat(tmp_path / "omniglot" / "chardata.mat", mat)

    d = load_dataset("omniglot", tmp_path, valid_size=0)
    assert (d.kind, d.binarization, d.num_classes) == ("binary", "dynamic", 50)
    assert d.train.images.dtype == torch.float32 and d.shape == (1, 28, 28)
    assert np.allclose(d.train.images[:, 0].numpy(), images["data"], atol=1e-7)
    assert np.allclose(d.test.images[:, 0].numpy(), images["testdata"], atol=1e-7)
    # The reshape IWAE's loaders use gives the same images.
    iwae = mat["testdata"].T.reshape((-1, 28, 28), order="F")
    assert np.allclose(d.test.images[:, 0].numpy(), iwae, atol=1e-7)
    assert d.train.labels.tolist() == labels["target"].tolist()
    assert d.test.labels.tolist() == labels["testtarget"].tolist()


def _cifar_batch(rng, n, protocol, path):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    entry = {b"batch_label": b"fake batch", b"labels": labels, b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(entry, protocol=protocol))
    return data, labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pickle_batches(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [_cifar_batch(rng, 3 + i, protocol, folder / f"data_batch_{i + 1}") for i in range(5)]
    test = _cifar_batch(rng, 4, protocol, folder / "test_batch")
    d = load_dataset("cifar10", tmp_path, valid_size=0, verify=False)
    assert (d.kind, d.shape, d.num_classes) == ("8bit", (3, 32, 32), 10)
    expected = np.concatenate([b[0] for b in train]).reshape(-1, 3, 32, 32)
    assert np.array_equal(d.train.images.numpy(), expected)
    assert d.train.labels.tolist() == sum((b[1] for b in train), [])
    assert np.array_equal(d.test.images.numpy(), test[0].reshape(-1, 3, 32, 32))
    assert d.test.labels.tolist() == test[1]
    # Channel-first rows: the first 1024 bytes are the red plane.
    assert np.array_equal(d.test.images[0, 0].numpy().ravel(), test[0][0, :1024])


def test_svhn_mat(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "svhn").mkdir()
    saved = {}
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
        saved[split] = (x, y)
    d = load_dataset("svhn", tmp_path, valid_size=0, verify=False)
    assert (d.kind, d.shape) == ("8bit", (3, 32, 32))
    for split in ("train", "test"):
        x, y = saved[split]
        got = getattr(d, split)
        assert np.array_equal(got.images.numpy(), x.transpose(3, 2, 0, 1))
        assert got.labels.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
        assert got.labels[0] == 0


def test_imagenet32_npz_batches(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "imagenet32" / "Imagenet32_train_npz"
    folder.mkdir(parents=True)
    train = []
    for b in (1, 2, 10):  # numeric, not lexicographic, batch order
        data = rng.integers(0, 256, (b + 1, 3072), dtype=np.uint8)
        labels = rng.integers(1, 1001, b + 1)
        np.savez(folder / f"train_data_batch_{b}.npz", data=data, labels=labels.tolist(),
                 mean=data.mean(0))
        train.append((data, labels))
    val_dir = tmp_path / "imagenet32" / "Imagenet32_val_npz"
    val_dir.mkdir()
    val = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    np.savez(val_dir / "val_data.npz", data=val, labels=[1, 1000, 7])
    d = load_dataset("imagenet32", tmp_path, valid_size=0)
    assert (d.kind, d.shape, d.num_classes) == ("8bit", (3, 32, 32), 1000)
    expected = np.concatenate([t[0] for t in train]).reshape(-1, 3, 32, 32)
    assert np.array_equal(d.train.images.numpy(), expected)
    assert d.train.labels.tolist() == (np.concatenate([t[1] for t in train]) - 1).tolist()
    assert np.array_equal(d.test.images.numpy(), val.reshape(-1, 3, 32, 32))
    assert d.test.labels.tolist() == [0, 999, 6]


def _save_png(path, array: np.ndarray, mode=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_image_folder_with_classes_and_splits(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "pets"
    written = {"train": [], "test": []}
    for split, per in (("train", 3), ("test", 2)):
        for label, cls in enumerate(("cat", "dog")):  # sorted folder names give the labels
            for i in range(per):
                img = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                _save_png(root / split / cls / f"{i:03d}.png", img)
                written[split].append((img, label))
    d = load_dataset("folder", path=root, valid_size=1)
    assert (d.kind, d.shape, d.num_classes, d.class_names) == ("8bit", (3, 6, 5), 2, ("cat", "dog"))
    got = torch.cat([d.train.images, d.valid.images])
    labels = torch.cat([d.train.labels, d.valid.labels])
    expect = {(bytes(img.transpose(2, 0, 1).tobytes()), lab) for img, lab in written["train"]}
    pairs = zip(got, labels, strict=True)
    assert {(bytes(x.numpy().tobytes()), int(y)) for x, y in pairs} == expect
    for (img, lab), x, y in zip(written["test"], d.test.images, d.test.labels, strict=True):
        assert np.array_equal(x.numpy(), img.transpose(2, 0, 1)) and int(y) == lab


def test_image_folder_flat_pool_grayscale_and_bilevel(tmp_path):
    rng = np.random.default_rng(5)
    gray = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(20)]
    for i, img in enumerate(gray):
        _save_png(tmp_path / "gray" / f"{i:02d}.png", img)
    d = load_dataset("folder", path=tmp_path / "gray")
    assert (len(d.train), len(d.valid), len(d.test)) == (16, 2, 2)
    assert d.kind == "8bit" and d.shape == (1, 4, 4) and d.train.labels is None
    got = sorted(bytes(x.numpy().tobytes()) for s in (d.train, d.valid, d.test) for x in s.images)
    assert got == sorted(img.tobytes() for img in gray)

    for i in range(10):
        bits = rng.integers(0, 2, (4, 4)).astype(bool)
        Image.fromarray(bits).convert("1").save(_mk(tmp_path / "bits") / f"{i}.png")
    b = load_dataset("folder", path=tmp_path / "bits", test_size=2, valid_size=2)
    assert (b.kind, b.binarization) == ("binary", "static")
    assert set(b.train.images.unique().tolist()) <= {0, 1}


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_image_folder_resize(tmp_path):
    for i in range(4):
        _save_png(tmp_path / "big" / f"{i}.png", np.full((10, 14, 3), 60 * i, dtype=np.uint8))
    d = load_dataset("folder", path=tmp_path / "big", image_size=5, test_size=1, valid_size=1)
    assert d.shape == (3, 5, 5)
    values = sorted(int(x.unique()) for s in (d.train, d.valid, d.test) for x in s.images)
    assert values == [0, 60, 120, 180]


def test_celeba_official_partition(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "celeba64"
    lines, expected = [], {"train": [], "valid": [], "test": []}
    for i, part in enumerate([0, 0, 1, 2, 0, 2]):
        img = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        name = f"{i + 1:06d}.png"
        _save_png(folder / "img_align_celeba" / name, img)
        lines.append(f"{name} {part}")
        fitted = Image.fromarray(img).crop(CELEBA_CROP).resize((64, 64), Image.Resampling.BOX)
        expected[("train", "valid", "test")[part]].append(np.asarray(fitted).transpose(2, 0, 1))
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    d = load_dataset("celeba64", tmp_path)
    assert (d.kind, d.shape) == ("8bit", (3, 64, 64))
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(d, split).images.numpy(), np.stack(expected[split]))


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(7)
    nchw = rng.integers(0, 256, (30, 1 if layout == "nhw" else 3, 5, 5), dtype=np.uint8)
    arr = {"nhwc": nchw.transpose(0, 2, 3, 1), "nchw": nchw, "nhw": nchw[:, 0]}[layout]
    labels = rng.integers(0, 4, 30)
    np.savez(tmp_path / "d.npz", x=arr, y=labels)
    d = load_dataset("npz", path=tmp_path / "d.npz", test_size=5, valid_size=5)
    assert d.kind == "8bit" and d.shape == nchw.shape[1:]
    assert d.num_classes == int(labels.max()) + 1
    got = {bytes(x.numpy().tobytes()) + bytes([int(y)])
           for s in (d.train, d.valid, d.test) for x, y in zip(s.images, s.labels, strict=True)}
    assert got == {bytes(x.tobytes()) + bytes([int(y)]) for x, y in zip(nchw, labels, strict=True)}
    assert (len(d.train), len(d.valid), len(d.test)) == (20, 5, 5)


def test_npz_split_files_and_value_types(tmp_path):
    rng = np.random.default_rng(8)
    sizes = (("train", 8), ("test", 3))
    bits = {s: rng.integers(0, 2, (n, 1, 4, 4)).astype(bool) for s, n in sizes}
    for s, a in bits.items():
        np.savez(_mk(tmp_path / "bin") / f"{s}.npz", images=a)
    d = load_dataset("npz", path=tmp_path / "bin", valid_size=2)
    assert (d.kind, d.binarization, len(d.test)) == ("binary", "static", 3)
    assert np.array_equal(d.test.images.numpy(), bits["test"].astype(np.uint8))

    probs = {s: rng.random((n, 4, 4)).astype(np.float32) for s, n in sizes}
    for s, a in probs.items():
        np.savez(_mk(tmp_path / "float") / f"{s}.npz", data=a)
    f = load_dataset("npz", path=tmp_path / "float", valid_size=2)
    assert (f.kind, f.binarization, f.test.images.dtype) == ("binary", "dynamic", torch.float32)
    assert np.array_equal(f.test.images[:, 0].numpy(), probs["test"])


def test_image_split_validation():
    with pytest.raises(ValueError, match="labels"):
        ImageSplit(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageSplit(torch.zeros(3, 2, 2, dtype=torch.uint8))


class _Py2StylePickler(pickle._Pickler):
    """Writes str/bytes as Python 2 ``str`` opcodes and numpy 1.x global names, like the
    real CIFAR-10 batches (pickled by Python 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)

    def save_global(self, obj, name=None):  # also used for functions such as _reconstruct
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str
    dispatch[type] = save_global


def test_cifar10_python2_style_pickle(tmp_path):
    import io

    rng = np.random.default_rng(9)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 2)]
        buf = io.BytesIO()
        _Py2StylePickler(buf, protocol=2).dump(
            {"batch_label": "batch", "labels": labels, "data": data}
        )
        assert b"numpy.core.multiarray" in buf.getvalue()
        (folder / name).write_bytes(buf.getvalue())
        expected.append((data, labels))
    d = load_dataset("cifar10", tmp_path, valid_size=0, verify=False)
    assert np.array_equal(d.test.images.numpy(), expected[5][0].reshape(-1, 3, 32, 32))
    assert d.train.labels.tolist() == sum((e[1] for e in expected[:5]), [])
