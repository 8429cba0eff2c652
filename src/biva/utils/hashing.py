"""File digests: one chunked reader for checkpoints, shipped models and data files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

CHUNK = 1 << 20


def file_digests(path: str | os.PathLike[str], algorithms: tuple[str, ...] = ("sha256",)
                 ) -> tuple[dict[str, str], int]:
    """({algorithm: hex digest}, size in bytes) of a regular file's bytes, read in 1 MiB
    chunks. A FIFO, device or folder is refused (reading /dev/zero or a pipe would never end)."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a folder, FIFO or device); expected a "
                         "file to checksum")
    digests = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for d in digests.values():
                d.update(block)
            size += len(block)
    return {a: d.hexdigest() for a, d in digests.items()}, size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex SHA-256 of a regular file's bytes."""
    return file_digests(path)[0]["sha256"]
