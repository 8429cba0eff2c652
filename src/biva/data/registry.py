"""``load_dataset``: every supported dataset by name, as train / valid / test splits.

Default splits (``valid_size=None``; the validation split never comes from the test set)::

    =================  ===============================  =============================  ==========
    name               train                            valid                          test
    =================  ===============================  =============================  ==========
    digits             1350                             150 (carved)                   297 (carved)
    binarized_mnist    50000 (official train)           10000 (official valid)         10000
      merge_valid=True 59000 (train + valid - 1000)     1000 (carved)                  10000
    mnist              55000                            5000 (carved)                  10000
    fashion_mnist      55000                            5000 (carved)                  10000
    omniglot           23345                            1000 (carved)                  8070
    cifar10            45000                            5000 (carved)                  10000
    svhn               68257                            5000 (carved)                  26032
    celeba64           official partition (162770 / 19867 / 19962) or train/valid/test folders
    imagenet32         1271167                          10000 (carved)                 50000 (val)
    folder, npz        given train/test splits, else test 10 % of the pool, valid 10 % of rest
    =================  ===============================  =============================  ==========

Carved splits are seeded (``seed``) and keep the original order within each split, except the
held-out parts of "folder" and "npz" data, which come in seeded random order (a folder sorted
by class would otherwise put one class first); ``ImageSplit.sources`` names each image's file
(or npz row). The BIVA
paper trains binarized MNIST on train + valid (60k): ``merge_valid=True, valid_size=0`` gives
exactly that (with an empty validation split).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from biva.config.kinds import DataKind
from biva.data.batches import bernoulli_draw
from biva.data.checksums import verify_file
from biva.data.errors import DatasetError
from biva.data.formats import (
    load_array_pickle,
    read_amat,
    read_idx,
    read_image_folder,
    read_images,
    read_mat,
    read_npz,
)
from biva.data.paths import resolve_data_root
from biva.data.types import DatasetSplits, ImageSplit
from biva.utils.seeds import make_generator

PathLike = str | os.PathLike[str]

DATASET_NAMES = (
    "digits", "binarized_mnist", "mnist", "fashion_mnist", "omniglot", "cifar10", "svhn",
    "celeba64", "imagenet32", "folder", "npz",
)
DOWNLOADABLE = ("binarized_mnist", "mnist", "fashion_mnist", "omniglot", "cifar10", "svhn")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# Aligned CelebA images are 178x218; this 148x148 box around the face is the usual crop
# before resizing to 64x64.
CELEBA_ALIGNED_SIZE = (178, 218)
CELEBA_CROP = (15, 40, 163, 188)

# "native" value types a loader can return, before binarization is applied.
_BINARY, _EIGHT_BIT, _INTENSITY = "binary", "8bit", "intensity"


@dataclass
class _Raw:
    """What a loader read: (images, labels) per split; None means "carve it"."""

    train: tuple[np.ndarray, np.ndarray | None]
    valid: tuple[np.ndarray, np.ndarray | None] | None
    test: tuple[np.ndarray, np.ndarray | None] | None
    native: str
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    # Per split, where each image came from (files relative to the folder, or npz rows).
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class _Ctx:
    name: str
    root: Path
    path: Path | None
    download: bool
    verify: bool
    image_size: int | None


# --------------------------------------------------------------------------- locating files


def _find(folder: Path, alternatives: Sequence[str]) -> Path | None:
    for alt in alternatives:
        if (folder / alt).is_file():
            return folder / alt
    return None


def _missing_error(ctx: _Ctx, looked: Sequence[Path], expected: Sequence[Sequence[str]]) -> str:
    want = "; ".join(" or ".join(alts) for alts in expected)
    where = ", ".join(str(p) for p in looked)
    if ctx.name in DOWNLOADABLE:
        fix = (f"pass download=True to load_dataset or run `biva download {ctx.name}` to fetch "
               "the public files")
    else:
        fix = f"{ctx.name} cannot be downloaded automatically; place the files there yourself"
    return (
        f"{ctx.name}: missing file(s): expected {want} in one of: {where}. Set root=, "
        f"path= or ${'BIVA_DATA_DIR'} to the folder holding them, or {fix}."
    )


def _locate(
    ctx: _Ctx, folders: Sequence[str], expected: Sequence[Sequence[str]]
) -> list[Path]:
    """Paths of the ``expected`` files (each a list of alternative names) in one folder."""
    if ctx.path is not None:
        candidates = [ctx.path]
    else:
        candidates = [ctx.root / f for f in folders] + [ctx.root]
    for attempt in range(2):
        for folder in candidates:
            found = [_find(folder, alts) for alts in expected]
            if all(f is not None for f in found):
                return [f for f in found if f is not None]
        if attempt == 0 and ctx.download and ctx.path is None:
            from biva.data.download import download

            download(ctx.name, ctx.root)
            continue
        break
    raise DatasetError(_missing_error(ctx, candidates, expected))


def _check(ctx: _Ctx, path: Path, key: str) -> None:
    if ctx.verify:
        verify_file(path, key)


# --------------------------------------------------------------------------- array helpers


def _labels_1d(y: np.ndarray, n: int, source: Path, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.size == n:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.number):
        raise DatasetError(
            f"{source}: {what}: expected {n} numeric labels, found an array of shape "
            f"{tuple(np.shape(y))} and dtype {y.dtype}"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
        raise DatasetError(f"{source}: {what}: expected integer labels, found fractional values")
    return y.astype(np.int64)


def _to_nchw(arr: np.ndarray, source: Path, key: str) -> np.ndarray:
    """An image array in NCHW, NHWC, (N, H, W) or flat (N, C*H*W) layout as (N, C, H, W)."""
    if arr.ndim == 4:
        c_first, c_last = arr.shape[1] in (1, 3), arr.shape[3] in (1, 3)
        if c_first and not c_last:
            return arr
        if c_last:
            return arr.transpose(0, 3, 1, 2)
        raise DatasetError(
            f"{source}: array {key!r}: expected NCHW or NHWC images with 1 or 3 channels, "
            f"found shape {arr.shape}"
        )
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 2:
        d = arr.shape[1]
        for c in (3, 1):
            s = int(round((d / c) ** 0.5))
            if c * s * s == d:
                # Flat rows are channel-first, as in the CIFAR and downsampled-ImageNet files.
                return arr.reshape(arr.shape[0], c, s, s)
    raise DatasetError(
        f"{source}: array {key!r}: expected images as (N, C, H, W), (N, H, W, C), (N, H, W) or "
        f"flat (N, C*H*W) with square images, found shape {arr.shape}"
    )


def _value_type(arr: np.ndarray, source: Path, key: str) -> str:
    """Classify an image array as binary {0,1}, 8-bit 0..255 or float intensities [0,1]."""
    if arr.dtype == np.bool_:
        return _BINARY
    if arr.size == 0:
        return _EIGHT_BIT if arr.dtype == np.uint8 else _INTENSITY
    lo, hi = arr.min(), arr.max()
    if np.issubdtype(arr.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DatasetError(
                f"{source}: array {key!r}: expected 8-bit values 0..255, found {lo}..{hi}"
            )
        return _BINARY if np.all((arr == 0) | (arr == 1)) else _EIGHT_BIT
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise DatasetError(
                f"{source}: array {key!r}: expected float intensities in [0, 1], found "
                f"{lo}..{hi}"
            )
        return _BINARY if np.all((arr == 0) | (arr == 1)) else _INTENSITY
    raise DatasetError(
        f"{source}: array {key!r}: expected uint8, bool or float images, found {arr.dtype}"
    )


def _unify(
    parts: Sequence[tuple[np.ndarray, str]], source: Path
) -> tuple[list[np.ndarray], str]:
    """Cast every split to the storage of one common value type."""
    types = {t for _, t in parts}
    if types <= {_BINARY}:
        native = _BINARY
    elif types <= {_BINARY, _EIGHT_BIT}:
        native = _EIGHT_BIT
    elif types <= {_BINARY, _INTENSITY} and all(a.dtype.kind in "fb" for a, _ in parts):
        native = _INTENSITY
    else:
        raise DatasetError(
            f"{source}: splits disagree on the pixel format: found {sorted(types)} "
            "(expected all 8-bit integers or all float intensities)"
        )
    dtype = np.float32 if native == _INTENSITY else np.uint8
    return [a.astype(dtype, copy=False) for a, _ in parts], native


_IMAGE_KEYS = ("images", "x", "data", "X", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets")


def npz_images(path: Path) -> tuple[np.ndarray, str, np.ndarray | None]:
    """The image array of an .npz file as stored, its key (one of ``images``, ``x``, ``data``,
    ``X``, ``arr_0``), and its labels (``labels``, ``y`` or ``targets``: checked integral, one
    per image, int64 (N,)) or None."""
    arrays = read_npz(path)
    key = next((k for k in _IMAGE_KEYS if k in arrays), None)
    if key is None:
        raise DatasetError(
            f"{path}: no image array: expected one of the keys {list(_IMAGE_KEYS)}, found "
            f"{sorted(arrays)}"
        )
    labels = None
    lkey = next((k for k in _LABEL_KEYS if k in arrays), None)
    if lkey is not None:
        labels = _labels_1d(arrays[lkey], len(arrays[key]), path, f"array {lkey!r}")
    return arrays[key], key, labels


def _npz_split(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images, key, labels = npz_images(path)
    return _to_nchw(images, path, key), labels


# --------------------------------------------------------------------------- loaders


def _load_digits(ctx: _Ctx) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return _Raw((images, labels), None, None, _INTENSITY, 10, tuple(str(i) for i in range(10)))


def _load_binarized_mnist(ctx: _Ctx) -> _Raw:
    splits = ("train", "valid", "test")
    expected = [[f"binarized_mnist_{s}.amat.gz", f"binarized_mnist_{s}.amat"] for s in splits]
    files = _locate(ctx, ["binarized_mnist"], expected)
    out = []
    for f in files:
        _check(ctx, f, f"binarized_mnist/{f.name}")
        out.append((read_amat(f, 784).reshape(-1, 1, 28, 28), None))
    return _Raw(out[0], out[1], out[2], _BINARY)


def _load_idx_pair(ctx: _Ctx, folder: str) -> _Raw:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    files = _locate(ctx, [folder], [[s + ".gz", s] for s in stems])
    for f in files:
        _check(ctx, f, f"{folder}/{f.name}")
    arrays = [read_idx(f, (28, 28) if "images" in f.name else ()) for f in files]
    pairs = []
    for (img_f, images), (lab_f, labels) in ((files[0], arrays[0]), (files[1], arrays[1])), (
        (files[2], arrays[2]), (files[3], arrays[3])
    ):
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{lab_f}: size mismatch: expected {images.shape[0]} labels to match "
                f"{img_f.name}, found {labels.shape[0]}"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{lab_f}: expected labels 0..9, found up to {labels.max()}")
        pairs.append((images[:, None], labels.astype(np.int64)))
    names = FASHION_CLASSES if folder == "fashion_mnist" else tuple(str(i) for i in range(10))
    return _Raw(pairs[0], None, pairs[1], _EIGHT_BIT, 10, names)


def _omniglot_split(
    mat: dict[str, np.ndarray], key: str, target: str, src: Path
) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(float32 images (N, 1, 28, 28), labels or None, number of classes or None)."""
    data = np.asarray(mat[key])
    if data.ndim != 2 or data.shape[0] != 784:
        raise DatasetError(
            f"{src}: variable {key!r}: expected 784 x N (one 28x28 image a column), found shape "
            f"{data.shape}"
        )
    if data.size and (data.min() < 0 or data.max() > 1):
        raise DatasetError(
            f"{src}: variable {key!r}: expected intensities in [0, 1], found "
            f"{data.min()}..{data.max()}"
        )
    n = data.shape[1]
    # Each column is a 28x28 image flattened column-major (MATLAB order), hence the transpose.
    images = data.T.reshape(n, 28, 28).transpose(0, 2, 1)[:, None].astype(np.float32)
    if target not in mat:
        return np.ascontiguousarray(images), None, None
    onehot = np.asarray(mat[target])
    if onehot.ndim == 2 and onehot.shape[1] == n and onehot.shape[0] != n:
        onehot = onehot.T  # IWAE stores classes x N
    if onehot.ndim != 2 or onehot.shape[0] != n:
        raise DatasetError(
            f"{src}: variable {target!r}: expected one-hot labels (classes x {n}), found "
            f"shape {onehot.shape}"
        )
    labels = onehot.argmax(axis=1).astype(np.int64)
    return np.ascontiguousarray(images), labels, int(onehot.shape[1])


def _load_omniglot(ctx: _Ctx) -> _Raw:
    (f,) = _locate(ctx, ["omniglot", "OMNIGLOT"], [["chardata.mat"]])
    _check(ctx, f, f"omniglot/{f.name}")
    mat = read_mat(f, ("data", "testdata"))
    *train, classes = _omniglot_split(mat, "data", "target", f)
    *test, _ = _omniglot_split(mat, "testdata", "testtarget", f)
    return _Raw(tuple(train), None, tuple(test), _INTENSITY, classes)


def _cifar_batch(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    _check(ctx, path, f"cifar10/{path.name}")
    entry = load_array_pickle(path)
    if not isinstance(entry, dict):
        raise DatasetError(
            f"{path}: expected a pickled dict with 'data' and 'labels', found "
            f"{type(entry).__name__}"
        )
    keys = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}
    if "data" not in keys or "labels" not in keys:
        raise DatasetError(
            f"{path}: expected keys b'data' and b'labels', found {sorted(keys)}"
        )
    data = keys["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != 3072
    ):
        shape = getattr(data, "shape", None)
        raise DatasetError(
            f"{path}: b'data': expected a uint8 array (N, 3072), found "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}"
        )
    labels = _labels_1d(np.asarray(keys["labels"]), data.shape[0], path, "b'labels'")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(
            f"{path}: b'labels': expected 0..9, found {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(ctx: _Ctx) -> _Raw:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = _locate(
        ctx, ["cifar10/cifar-10-batches-py", "cifar-10-batches-py", "cifar10"],
        [[n] for n in names],
    )
    batches = [_cifar_batch(ctx, f) for f in files]
    train = (np.concatenate([b[0] for b in batches[:5]]),
             np.concatenate([b[1] for b in batches[:5]]))
    return _Raw(train, None, batches[5], _EIGHT_BIT, 10, CIFAR10_CLASSES)


def _svhn_split(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    _check(ctx, path, f"svhn/{path.name}")
    mat = read_mat(path, ("X", "y"))
    x = np.asarray(mat["X"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DatasetError(
            f"{path}: variable 'X': expected uint8 (32, 32, 3, N), found {x.dtype} {x.shape}"
        )
    y = _labels_1d(np.asarray(mat["y"]), x.shape[3], path, "variable 'y'")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DatasetError(
            f"{path}: variable 'y': expected labels 1..10 (10 = digit 0), found "
            f"{y.min()}..{y.max()}"
        )
    y = np.where(y == 10, 0, y)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def _load_svhn(ctx: _Ctx) -> _Raw:
    files = _locate(ctx, ["svhn", "SVHN"], [["train_32x32.mat"], ["test_32x32.mat"]])
    train, test = (_svhn_split(ctx, f) for f in files)
    return _Raw(train, None, test, _EIGHT_BIT, 10, tuple(str(i) for i in range(10)))


def _split_dirs(folder: Path) -> dict[str, Path] | None:
    """{"train", "test", maybe "valid"} subfolders when ``folder`` is laid out by split."""
    found = {}
    for split, alts in (("train", ("train",)), ("valid", ("valid", "val")), ("test", ("test",))):
        for alt in alts:
            if (folder / alt).is_dir():
                found[split] = folder / alt
                break
    return found if {"train", "test"} <= found.keys() else None


def _split_npz(folder: Path) -> dict[str, Path] | None:
    found = {s: folder / f"{s}.npz" for s in ("train", "valid", "test")}
    found = {s: p for s, p in found.items() if p.is_file()}
    return found if {"train", "test"} <= found.keys() else None


def _raw_from_arrays(
    splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
    source: Path,
    class_names: tuple[str, ...] | None = None,
    sources: dict[str, tuple[str, ...]] | None = None,
) -> _Raw:
    order = [s for s in ("train", "valid", "test") if s in splits]
    typed = [(splits[s][0], _value_type(splits[s][0], source, s)) for s in order]
    arrays, native = _unify(typed, source)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise DatasetError(f"{source}: splits disagree on image shape: found {sorted(shapes)}")
    out = {s: (a, splits[s][1]) for s, a in zip(order, arrays, strict=True)}
    labels = [y for _, y in out.values() if y is not None]
    num_classes = None
    if class_names is not None:
        num_classes = len(class_names)
    elif labels and len(labels) == len(out) and all(y.size for y in labels):
        num_classes = _class_count(out, source)
    return _Raw(out["train"], out.get("valid"), out.get("test"), native, num_classes,
                class_names, sources or {})


def _class_count(splits: dict[str, tuple[np.ndarray, np.ndarray | None]], source: Path) -> int:
    """C for labels that must be the class indices 0..C-1, every class in the training split.

    A stray label (9000 among digits, -1) would otherwise size a 9001-class model or silently
    drop the labels.
    """
    for split, (_, y) in splits.items():
        if y is not None and int(y.min()) < 0:
            bad = np.unique(y[y < 0])[:5].tolist()
            raise DatasetError(f"{source}: {split} labels must be class indices >= 0; found "
                               f"negative values {bad}")
    values = np.unique(splits["train"][1])
    count = int(values[-1]) + 1
    # Sorted distinct values >= 0 are exactly 0..C-1 iff the largest is C - 1. The first gaps
    # lie below len(values) + 5: found from the values alone, in memory independent of how
    # large a stray label is (a set of range(2**40) never finishes).
    if count != len(values):
        missing = np.setdiff1d(np.arange(len(values) + 5), values)[:5].tolist()
        raise DatasetError(
            f"{source}: train labels must be the class indices 0..C-1 with every class present; "
            f"found {len(values)} distinct values up to {count - 1} (classes {missing[:5]} have "
            f"no training example): relabel them 0..{len(values) - 1}")
    for split, (_, y) in splits.items():
        if y is not None and int(y.max()) >= count:
            bad = np.unique(y[y >= count])[:5].tolist()
            raise DatasetError(f"{source}: {split} labels {bad} are not among the {count} "
                               "classes of the training labels")
    return count


def _load_from_folder_or_npz(ctx: _Ctx, where: Path, crop=None) -> _Raw:
    """A folder laid out by split (images or npz), a pool folder of images, or one .npz."""
    if where.is_file():
        pair = _npz_split(where)
        return _raw_from_arrays({"train": pair}, where, sources={"train": _rows(where, pair[0])})
    if not where.is_dir():
        raise DatasetError(
            f"{where}: expected an image folder or an .npz file, found no such file or folder"
        )
    npz = _split_npz(where)
    if npz is not None:
        pairs = {s: _npz_split(p) for s, p in npz.items()}
        return _raw_from_arrays(pairs, where,
                                sources={s: _rows(npz[s], x) for s, (x, _) in pairs.items()})
    dirs = _split_dirs(where)
    if dirs is None:
        images, labels, names, files = read_image_folder(where, ctx.image_size, crop)
        return _raw_from_arrays({"train": (images, labels)}, where, names, {"train": files})
    images, labels, names, files = read_image_folder(dirs["train"], ctx.image_size, crop)
    splits, sources = {"train": (images, labels)}, {"train": files}
    for s in ("valid", "test"):
        if s in dirs:
            x, y, _, f = read_image_folder(dirs[s], ctx.image_size, crop, class_names=names)
            splits[s] = (x, y)
            sources[s] = tuple(f"{dirs[s].name}/{name}" for name in f)
    sources["train"] = tuple(f"{dirs['train'].name}/{name}" for name in files)
    return _raw_from_arrays(splits, where, names, sources)


def _rows(path: Path, images: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{path.name}[{i}]" for i in range(len(images)))


def _load_folder(ctx: _Ctx) -> _Raw:
    if ctx.path is None:
        raise ValueError(f"load_dataset({ctx.name!r}) needs path= (a folder or an .npz file)")
    return _load_from_folder_or_npz(ctx, ctx.path)


def _celeba_partition(ctx: _Ctx, folder: Path) -> _Raw | None:
    images_dir, part = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    if not (images_dir.is_dir() and part.is_file()):
        return None
    groups: dict[int, list[Path]] = {0: [], 1: [], 2: []}
    for lineno, line in enumerate(part.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetError(
                f"{part}: line {lineno}: expected '<image file> <0|1|2>', found {line!r}"
            )
        groups[int(fields[1])].append(images_dir / fields[0])
    size = ctx.image_size or 64
    splits = {}
    for s, g in (("train", 0), ("valid", 1), ("test", 2)):
        files = groups[g]
        if not files:
            raise DatasetError(f"{part}: expected images in partition {g} ({s}), found none")
        crop = CELEBA_CROP if _first_size(files[0]) == CELEBA_ALIGNED_SIZE else None
        splits[s] = (read_images(files, size, crop), None)
    return _raw_from_arrays(splits, folder)


def _first_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable image: {exc}") from exc


def _named_folder(ctx: _Ctx, folders: Sequence[str]) -> Path:
    if ctx.path is not None:
        return ctx.path
    for f in folders:
        if (ctx.root / f).exists():
            return ctx.root / f
    raise DatasetError(
        f"{ctx.name}: missing data: expected one of {[str(ctx.root / f) for f in folders]} "
        "(an image folder with train/ valid/ test/ subfolders, train.npz/valid.npz/test.npz, "
        "or a single .npz). It cannot be downloaded automatically; place the files there "
        "yourself, or pass root= or path=."
    )


def _load_celeba64(ctx: _Ctx) -> _Raw:
    folder = _named_folder(ctx, ["celeba64", "celeba", "celeba64.npz"])
    if ctx.image_size is None:
        ctx = replace(ctx, image_size=64)
    raw = _celeba_partition(ctx, folder) if folder.is_dir() else None
    return raw if raw is not None else _load_from_folder_or_npz(ctx, folder)


def _imagenet_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path)
    if "data" not in arrays or "labels" not in arrays:
        raise DatasetError(
            f"{path}: expected keys 'data' and 'labels' (downsampled ImageNet npz), found "
            f"{sorted(arrays)}"
        )
    data = arrays["data"]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: array 'data': expected uint8 (N, 3072), found {data.dtype} {data.shape}"
        )
    labels = _labels_1d(arrays["labels"], data.shape[0], path, "array 'labels'")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise DatasetError(
            f"{path}: array 'labels': expected 1..1000 (1-based), found "
            f"{labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, 32, 32), labels - 1


def _batch_number(path: Path) -> int:
    m = re.search(r"(\d+)\.npz$", path.name)
    return int(m.group(1)) if m else 0


def _load_imagenet32(ctx: _Ctx) -> _Raw:
    folder = _named_folder(ctx, ["imagenet32", "Imagenet32", "imagenet32.npz"])
    if folder.is_dir():
        train_files = sorted(folder.rglob("train_data_batch_*.npz"), key=_batch_number)
        val_files = sorted(folder.rglob("val_data*.npz"))
        if train_files and val_files:
            parts = [_imagenet_npz(f) for f in train_files]
            train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            vals = [_imagenet_npz(f) for f in val_files]
            test = (np.concatenate([p[0] for p in vals]), np.concatenate([p[1] for p in vals]))
            return _Raw(train, None, test, _EIGHT_BIT, 1000)
        if train_files or val_files:
            found = [str(p.relative_to(folder)) for p in train_files + val_files]
            raise DatasetError(
                f"{folder}: incomplete downsampled ImageNet: expected train_data_batch_*.npz "
                f"and val_data.npz, found only {found}"
            )
        train_dir, valid_dir = folder / "train_32x32", folder / "valid_32x32"
        if train_dir.is_dir() and valid_dir.is_dir():
            size = ctx.image_size or 32
            train = read_image_folder(train_dir, size)[:2]
            test = read_image_folder(valid_dir, size)[:2]
            return _raw_from_arrays({"train": train, "test": test}, folder)
    if ctx.image_size is None:
        ctx = replace(ctx, image_size=32)
    return _load_from_folder_or_npz(ctx, folder)


_LOADERS: dict[str, Callable[[_Ctx], _Raw]] = {
    "digits": _load_digits,
    "binarized_mnist": _load_binarized_mnist,
    "mnist": lambda ctx: _load_idx_pair(ctx, "mnist"),
    "fashion_mnist": lambda ctx: _load_idx_pair(ctx, "fashion_mnist"),
    "omniglot": _load_omniglot,
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
    "celeba64": _load_celeba64,
    "imagenet32": _load_imagenet32,
    "folder": _load_folder,
    "npz": _load_folder,
}

_DEFAULT_VALID = {
    "digits": 150, "binarized_mnist": 1000, "mnist": 5000, "fashion_mnist": 5000,
    "omniglot": 1000, "cifar10": 5000, "svhn": 5000, "imagenet32": 10000,
}
_DEFAULT_TEST = {"digits": 297}
_DEFAULT_FRACTION = 0.1


# --------------------------------------------------------------------------- assembling splits


def _count(size: int | float | None, n: int, default: int | None, what: str) -> int:
    if size is None:
        size = default if default is not None else _DEFAULT_FRACTION
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1), got {size}")
        size = int(round(size * n))
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{what} must be a non-negative int or a fraction, got {size!r}")
    if size >= n:
        raise ValueError(f"{what}={size} leaves no training data out of {n} examples")
    return size


def _carve(split: ImageSplit, size: int, seed: int, key: str,
           shuffle: bool = False) -> tuple[ImageSplit, ImageSplit]:
    """(rest, carved): ``size`` seeded random examples.

    Both keep their original order unless ``shuffle``: then the carved part comes in the
    seeded random order, so that its first N examples are a random sample even when the
    source is sorted by class (an image folder).
    """
    perm = torch.randperm(len(split), generator=make_generator(seed, "carve", key))
    carved = perm[:size] if shuffle else torch.sort(perm[:size]).values
    rest = torch.sort(perm[size:]).values
    return split.subset(rest), split.subset(carved)


def _tensor_split(pair: tuple[np.ndarray, np.ndarray | None],
                  sources: tuple[str, ...] | None = None) -> ImageSplit:
    images, labels = pair
    # np.array copies: inputs may be read-only views of file buffers.
    x = torch.from_numpy(np.array(images, copy=True, order="C"))
    y = None if labels is None else torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
    return ImageSplit(x, y, sources)


def _binarize(
    raw: _Raw, split: ImageSplit, mode: str | None, seed: int, tag: str
) -> ImageSplit:
    if mode is None or raw.native == _BINARY:
        return split
    images = split.images
    if raw.native == _EIGHT_BIT:
        images = images.to(torch.float32) / 255.0
    if mode == "static":
        images = bernoulli_draw(images, seed, "static", tag)
    return ImageSplit(images, split.labels, split.sources)


def _resolve_binarization(name: str, native: str, requested: str | None) -> str | None:
    allowed = {
        _BINARY: {None: "static", "static": "static"},
        _INTENSITY: {None: "dynamic", "dynamic": "dynamic", "static": "static"},
        _EIGHT_BIT: {None: None, "none": None, "dynamic": "dynamic", "static": "static"},
    }[native]
    if requested not in allowed:
        choices = sorted(repr(k) for k in allowed if k is not None)
        raise ValueError(
            f"{name}: binarization={requested!r} is not possible for {native} data; "
            f"choose None or one of {', '.join(choices)}"
        )
    return allowed[requested]


def _loader_context(name: str, root: PathLike | None, path: PathLike | None, *,
                    download: bool, verify: bool, image_size: int | None) -> _Ctx:
    """What a loader needs: the data root, the dataset's own path (a relative one not found
    from the working directory is looked up under the data root) and the reading options."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if image_size is not None and name not in ("celeba64", "imagenet32", "folder", "npz"):
        raise ValueError(f"image_size applies to image-folder datasets, not {name!r}")
    data_root = resolve_data_root(root)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_absolute() and not path.exists() and (data_root / path).exists():
            path = data_root / path
    ctx = _Ctx(
        name=name,
        root=data_root,
        path=path,
        download=download,
        verify=verify,
        image_size=image_size,
    )
    return ctx


def _held_out_splits(name: str, train: ImageSplit, valid: ImageSplit | None,
                     test: ImageSplit | None, *, seed: int, valid_size, test_size,
                     merge_valid: bool) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
    """(train, valid, test): the splits a dataset ships, the missing ones carved from train
    with ``seed`` (``valid_size`` / ``test_size``: examples or a fraction), and the official
    validation split merged into train first with ``merge_valid``."""
    # Users' folders are often sorted by class: their held-out parts come shuffled.
    shuffle = name in ("folder", "npz")

    if test is None:
        n_test = _count(test_size, len(train), _DEFAULT_TEST.get(name), "test_size")
        train, test = _carve(train, n_test, seed, "test", shuffle)
    elif test_size is not None:
        raise ValueError(f"{name} ships a test split; test_size applies only to carved tests")

    if merge_valid:
        if valid is None:
            raise ValueError(f"{name} has no official validation split to merge")
        labels = None
        if train.labels is not None and valid.labels is not None:
            labels = torch.cat([train.labels, valid.labels])
        train = ImageSplit(torch.cat([train.images, valid.images]), labels)
        valid = None
    if valid is None:
        n_valid = _count(valid_size, len(train), _DEFAULT_VALID.get(name), "valid_size")
        train, valid = _carve(train, n_valid, seed, "valid", shuffle)
    elif valid_size is not None:
        raise ValueError(
            f"{name} ships a validation split; valid_size applies only with merge_valid=True"
        )

    return train, valid, test


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    binarization: str | None = None,
    valid_size: int | float | None = None,
    seed: int = 0,
    path: PathLike | None = None,
    download: bool = False,
    verify: bool = True,
    merge_valid: bool = False,
    test_size: int | float | None = None,
    image_size: int | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` (one of DATASET_NAMES) as train, valid and test ``ImageSplit`` objects.

    ``binarization``: None = the dataset's default (8-bit data stay 8-bit; digits and omniglot
    "dynamic"; binarized_mnist is "static"), or "static" / "dynamic" / "none" (8-bit data
    only: explicitly no binarization). ``valid_size`` / ``test_size``: examples (int) or a
    fraction (float) carved with ``seed``; see the module docstring for the defaults (e.g.
    digits: test 297, valid 150, train 1350; MNIST: valid 5000 of the 60000 training images).
    ``path`` points at the dataset's own folder or file (required for "folder" / "npz"); a
    relative path not found from the working directory is looked up under the data root
    (how a shipped pretrained model names its folder, e.g. "photos32"); ``image_size``
    crops and resizes folder images to a square; ``verify`` checks known SHA-256/MD5
    checksums (memoised per file).
    """
    ctx = _loader_context(name, root, path, download=download, verify=verify,
                          image_size=image_size)
    raw = _LOADERS[name](ctx)
    mode = _resolve_binarization(name, raw.native, binarization)

    def read_split(which: str) -> ImageSplit:
        pair = getattr(raw, which)
        return _binarize(raw, _tensor_split(pair, raw.sources.get(which)), mode, seed, which)

    train = read_split("train")
    test = None if raw.test is None else read_split("test")
    valid = None if raw.valid is None else read_split("valid")
    train, valid, test = _held_out_splits(name, train, valid, test, seed=seed,
                                          valid_size=valid_size, test_size=test_size,
                                          merge_valid=merge_valid)
    kind = DataKind.EIGHT_BIT if mode is None else DataKind.BINARY
    return DatasetSplits(
        name=name,
        train=train,
        valid=valid,
        test=test,
        kind=kind,
        binarization=mode,
        num_classes=raw.num_classes,
        class_names=raw.class_names,
    )
