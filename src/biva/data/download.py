"""Fetch the public benchmark files into ``<root>/<dataset>/``.

Each file is streamed to a temporary file next to its destination, checked against the known
checksums (see ``checksums``) and only then renamed into place, so an interrupted or corrupt
download never leaves a file that looks complete. Never used by the tests (no network).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from biva.data.checksums import known_file, verify_file
from biva.data.errors import DatasetError
from biva.data.paths import resolve_data_root

_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_OMNIGLOT_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"

# dataset -> [(url, path relative to root)]; checksum keys are "<dataset>/<file name>".
SOURCES: dict[str, list[tuple[str, str]]] = {
    "mnist": [(_MNIST_URL + f, f"mnist/{f}") for f in _MNIST_FILES],
    "fashion_mnist": [(_FASHION_URL + f, f"fashion_mnist/{f}") for f in _MNIST_FILES],
    "binarized_mnist": [
        (f"{_BINARIZED_URL}binarized_mnist_{s}.amat", f"binarized_mnist/binarized_mnist_{s}.amat")
        for s in ("train", "valid", "test")
    ],
    "omniglot": [(_OMNIGLOT_URL, "omniglot/chardata.mat")],
    "cifar10": [(_CIFAR10_URL, "cifar10/cifar-10-python.tar.gz")],
    "svhn": [(_SVHN_URL + f, f"svhn/{f}") for f in ("train_32x32.mat", "test_32x32.mat")],
}

_MANUAL = {
    "celeba64": "download img_align_celeba.zip and list_eval_partition.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into <root>/celeba64/",
    "imagenet32": "download Imagenet32_train_npz.zip and Imagenet32_val_npz.zip from "
    "https://image-net.org/download-images (login required) and unzip them into "
    "<root>/imagenet32/",
    "digits": "nothing to download: scikit-learn ships the 8x8 digits",
    "folder": "a user folder has nothing to download",
    "npz": "a user file has nothing to download",
}


def fetch_url(url: str, dest: str | os.PathLike[str], *, key: str | None = None,
              timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically; verify against ``KNOWN_FILES[key]`` if given.

    Returns ``dest``. On any failure no partial file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "biva-data"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if key is not None:
            verify_file(tmp, key)
        os.replace(tmp, dest)
    except DatasetError as exc:
        raise DatasetError(f"download of {url} to {dest} failed: {exc}") from exc
    except OSError as exc:  # URLError, HTTPError and socket errors are OSErrors
        raise DatasetError(f"download of {url} to {dest} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            # Refuse links and paths escaping the target: a tarball must not write elsewhere.
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                raise DatasetError(f"{archive}: refusing unsafe archive member {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            tar.extractall(target, members=members)  # noqa: S202


def download(name: str, root: str | os.PathLike[str] | None = None, *,
             force: bool = False) -> Path:
    """Fetch the public files of dataset ``name`` into ``<root>/<name>/``; return that folder.

    Files already present are kept (re-verified) unless ``force``. Raises DatasetError for
    datasets that must be fetched by hand (CelebA, ImageNet32), saying how.
    """
    if name not in SOURCES:
        how = _MANUAL.get(name, f"unknown dataset {name!r}; downloadable: {sorted(SOURCES)}")
        raise DatasetError(f"{name}: cannot download automatically: {how}")
    base = resolve_data_root(root)
    for url, rel in SOURCES[name]:
        dest = base / rel
        key = f"{name}/{dest.name}" if known_file(f"{name}/{dest.name}") else None
        if dest.is_file() and not force:
            if key is not None:
                verify_file(dest, key)
        else:
            fetch_url(url, dest, key=key)
    if name == "cifar10":
        archive = base / "cifar10" / "cifar-10-python.tar.gz"
        if force or not (base / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file():
            _extract_tar(archive, base / "cifar10")
    return base / name
