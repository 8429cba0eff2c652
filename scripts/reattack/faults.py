"""The raw material of the attacks: copies of shipped models (re-signed after an edit, as an
attacker would), folders of real images, FIFOs, device-file links, a really mounted tmpfs, and
snapshots of folders to prove that nothing on disk changed."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import biva.pretrained

# The card edits the pretrained-surface tests make, shared with them (one copy).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from card_edits import edit_card as edit_card  # noqa: E402  (re-exported)
from card_edits import sign as sign  # noqa: E402

SHIPPED = Path(biva.pretrained.__file__).parent
DATA = Path(os.environ.get("BIVA_DATA_DIR", Path(__file__).resolve().parents[3] / "shared"
                           / "data"))


def copy_model(name: str, dest: Path) -> Path:
    """A copy of the shipped model ``name`` at ``dest`` (a local pretrained folder)."""
    shutil.copytree(SHIPPED / name, dest)
    return dest


def photos(dest: Path, n: int, size: int = 32) -> Path:
    """``n`` real photos from ../shared/data/photos32, flat in ``dest`` as PNGs."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in (DATA / "photos32").rglob("*.jpg"))[:n]
    for i, f in enumerate(files):
        Image.open(f).convert("RGB").resize((size, size)).save(dest / f"{i:05d}.png")
    return dest


def noise_pngs(dest: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """``n`` random colour PNGs (many files, cheap to make)."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
            dest / f"{i:06d}.png", compress_level=0)
    return dest


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root``."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def changed(before: dict[str, str], root: Path) -> str | None:
    """A finding if ``root`` no longer holds exactly the files of ``before``."""
    after = snapshot(root)
    if after == before:
        return None
    diff = sorted(set(before) ^ set(after)) + sorted(
        k for k in set(before) & set(after) if before[k] != after[k])
    return f"{root.name} changed: {diff[:5]}"


def csv_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV file as the csv module parses them (header included)."""
    with open(path, encoding="utf-8", newline="") as f:   # keep a quoted "\r" as it is
        return list(csv.reader(f))


def mount_tmpfs(mnt: Path, size: str = "20m") -> None:
    """Mount a real tmpfs at ``mnt`` (root on Linux)."""
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True, capture_output=True)


def fill(mnt: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``mnt`` with one real file."""
    st = os.statvfs(mnt)
    with open(mnt / "filler", "ab") as f:
        os.posix_fallocate(f.fileno(), f.tell(), max(st.f_bavail * st.f_frsize - leave, 1))


def unmount_all(root: Path) -> None:
    """Unmount every tmpfs mounted under ``root``."""
    for line in Path("/proc/mounts").read_text().splitlines():
        where = line.split()[1]
        if where.startswith(str(root)):
            subprocess.run(["umount", "-l", where], capture_output=True)
