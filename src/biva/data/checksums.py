"""Known checksums of the benchmark files, and verification with a per-file memo.

A file is accepted when any of these matches:

* ``sha256``: SHA-256 of the file itself (the copies in the project's ``shared/data``,
  from its ``SHA256SUMS``);
* ``md5``: the MD5 the distributor publishes for its download (the values torchvision and the
  dataset pages list), so a fresh public download verifies too;
* ``content_sha256``: SHA-256 of the decompressed payload of a ``.gz`` file. The public
  ``.gz`` files and the shared copies were compressed differently (different bytes) but hold
  the same IDX / .amat payload; the same digest also checks an uncompressed copy.

Files without an entry (OMNIGLOT, user folders, ...) are not verified.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from biva.data.errors import DatasetError
from biva.utils.hashing import file_digests

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    """Accepted digests (lowercase hex) of one file; any match accepts the file."""

    sha256: tuple[str, ...] = ()
    md5: tuple[str, ...] = ()
    content_sha256: str | None = None


# Keys are "<dataset>/<file name>".
KNOWN_FILES: dict[str, KnownFile] = {
    "binarized_mnist/binarized_mnist_train.amat.gz": KnownFile(
        sha256=("6c30860212f222701825d04c228f240d9e9b68be0de352a781e49038135aaaf9",),
        content_sha256="ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    ),
    "binarized_mnist/binarized_mnist_valid.amat.gz": KnownFile(
        sha256=("4991ee5e561bd22bcea37220d8f49b8ab8f67c6015c0a34e0183cb4a413b4798",),
        content_sha256="1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    ),
    "binarized_mnist/binarized_mnist_test.amat.gz": KnownFile(
        sha256=("9d0e3423fdf6873abd2bc3f0cccfbbba6d9ee7d1eb486c694286065ba31ed916",),
        content_sha256="e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    ),
    "mnist/train-images-idx3-ubyte.gz": KnownFile(
        sha256=("db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",),
        md5=("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
        content_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "mnist/train-labels-idx1-ubyte.gz": KnownFile(
        sha256=("51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",),
        md5=("d53e105ee54ea40749a09fcbcd1e9432",),
        content_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "mnist/t10k-images-idx3-ubyte.gz": KnownFile(
        sha256=("cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",),
        md5=("9fb629c4189551a2d022fa330f9573f3",),
        content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": KnownFile(
        sha256=("e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",),
        md5=("ec29112dd5afa0611ce80d1b7f02629c",),
        content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    "fashion_mnist/train-images-idx3-ubyte.gz": KnownFile(
        sha256=("b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",),
        md5=("8d4fb7e6c68d591d4c3dfef9ec88bf0d",),
        content_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "fashion_mnist/train-labels-idx1-ubyte.gz": KnownFile(
        sha256=("0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",),
        md5=("25c81989df183df01b3e8a0aad5dffbe",),
        content_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "fashion_mnist/t10k-images-idx3-ubyte.gz": KnownFile(
        sha256=("cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",),
        md5=("bef4ecab320f06d8554ea6380940ec79",),
        content_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "fashion_mnist/t10k-labels-idx1-ubyte.gz": KnownFile(
        sha256=("8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",),
        md5=("bb300cfdad3c16e7a12a480ee83cd310",),
        content_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
    "cifar10/cifar-10-python.tar.gz": KnownFile(md5=("c58f30108f718f92721af3b95e74349a",)),
    "cifar10/data_batch_1": KnownFile(md5=("c99cafc152244af753f735de768cd75f",)),
    "cifar10/data_batch_2": KnownFile(md5=("d4bba439e000b95fd0a9bffe97cbabec",)),
    "cifar10/data_batch_3": KnownFile(md5=("54ebc095f3ab1f0389bbae665268c751",)),
    "cifar10/data_batch_4": KnownFile(md5=("634d18415352ddfa80567beed471001a",)),
    "cifar10/data_batch_5": KnownFile(md5=("482c414d41f54cd18b22e5b47cb7c3cb",)),
    "cifar10/test_batch": KnownFile(md5=("40351d587109b95175f43aff81a1287e",)),
    "svhn/train_32x32.mat": KnownFile(md5=("e26dedcc434d2e4c54c9b2d4a06d8373",)),
    "svhn/test_32x32.mat": KnownFile(md5=("eb5a983be6a315427106f1b164d9cef3",)),
}


def known_file(key: str) -> KnownFile | None:
    """Accepted digests for ``"<dataset>/<file name>"``, or None if the file is unknown.

    An uncompressed copy ``name`` of a known ``name.gz`` is known by the payload digest.
    """
    entry = KNOWN_FILES.get(key)
    if entry is not None:
        return entry
    gz = KNOWN_FILES.get(key + ".gz")
    if gz is not None and gz.content_sha256 is not None:
        return KnownFile(sha256=(gz.content_sha256,))
    return None


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# Memoised on (path, size, mtime): re-loading an unchanged file costs one stat, not a re-hash.
@lru_cache(maxsize=512)
def _file_digests(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    digests, _ = file_digests(path, ("sha256", "md5"))
    return digests["sha256"], digests["md5"]


@lru_cache(maxsize=512)
def _gzip_payload_sha256(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                sha.update(block)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: truncated or corrupt gzip file: expected a complete gzip stream, "
            f"found {type(exc).__name__}: {exc}"
        ) from exc
    return sha.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex SHA-256 of a file's bytes (memoised per path, size and mtime)."""
    return _file_digests(*_stat_key(Path(path)))[0]


def verify_file(path: str | os.PathLike[str], key: str | None = None) -> bool:
    """Check a file against ``KNOWN_FILES[key]`` (key defaults to "<parent>/<name>").

    Returns True if verified, False if no checksum is known; raises DatasetError on mismatch.
    """
    path = Path(path)
    key = key or f"{path.parent.name}/{path.name}"
    entry = known_file(key)
    if entry is None:
        return False
    stat_key = _stat_key(path)
    sha, md5 = _file_digests(*stat_key)
    if sha in entry.sha256 or md5 in entry.md5:
        return True
    if entry.content_sha256 is not None:
        if sha == entry.content_sha256:  # an uncompressed copy of the payload
            return True
        with open(path, "rb") as fh:
            is_gzip = fh.read(2) == b"\x1f\x8b"
        if is_gzip and _gzip_payload_sha256(*stat_key) == entry.content_sha256:
            return True
    expected = [f"sha256 {d}" for d in entry.sha256] + [f"md5 {d}" for d in entry.md5]
    if entry.content_sha256 is not None:
        expected.append(f"sha256 of the decompressed content {entry.content_sha256}")
    raise DatasetError(
        f"{path}: checksum mismatch for {key}: expected {' or '.join(expected)}; "
        f"found sha256 {sha} (md5 {md5}). The file is corrupt, truncated or a different "
        "version: delete it and download it again, or pass verify=False to load it anyway."
    )
