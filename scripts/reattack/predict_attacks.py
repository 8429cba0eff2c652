"""Attacks on ``biva predict`` (the shipped mnist-100-labels classifier): counts below one,
garbage arrays, damaged files, FIFOs, a large npz (memory), and an earlier output in the way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from runner import Attack, Result

PREDICT = ["predict", "--pretrained", "mnist-100-labels", "--threads", "1", "--no-progress"]


def _npz(work: Path, n: int = 5, **arrays) -> Path:
    path = work / "in.npz"
    arrays = arrays or {"images": np.zeros((n, 28, 28), np.uint8)}
    np.savez_compressed(path, **arrays)
    return path


def _count(option: str, value: str) -> Attack:
    return Attack(f"{option} {value}", "predict", "a count below one",
                  lambda w: [*PREDICT, "--npz", str(_npz(w)), option, value])


def _array(label: str, **arrays) -> Attack:
    return Attack(f"npz {label}", "predict", "garbage in the array",
                  lambda w: [*PREDICT, "--npz", str(_npz(w, **arrays))])


def _truncated(work: Path) -> list[str]:
    path = _npz(work, 50)
    path.write_bytes(path.read_bytes()[:200])
    return [*PREDICT, "--npz", str(path)]


def _fifo_npz(work: Path) -> list[str]:
    os.mkfifo(work / "in.npz")
    return [*PREDICT, "--npz", str(work / "in.npz")]


def _fifo_image(work: Path) -> list[str]:
    folder = work / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / f"{i}.png")
    os.mkfifo(folder / "f.png")
    return [*PREDICT, "--images", str(folder), "--out", str(work / "p.npz")]


def _fifo_image_check(work: Path, result: Result) -> str | None:
    files = list(np.load(work / "p.npz")["files"]) if (work / "p.npz").is_file() else None
    return None if files is not None and len(files) == 3 else f"files: {files}"


def _large(n: int):
    def setup(work: Path) -> list[str]:
        return [*PREDICT, "--npz", str(_npz(work, images=np.zeros((n, 28, 28), np.uint8))),
                "--batch-size", "1000", "--out", str(work / "p.npz")]
    return setup


def _twice(work: Path) -> list[str]:
    path = _npz(work)
    first = [*PREDICT, "--npz", str(path)]
    from runner import run_process
    assert run_process(first, work, 300).rc == 0
    out = sorted(work.rglob("predictions_*.npz"))
    work.joinpath(".first.json").write_text(json.dumps([str(p) for p in out]))
    return first


def _twice_check(work: Path, result: Result) -> str | None:
    first = json.loads(work.joinpath(".first.json").read_text())
    now = sorted(str(p) for p in work.rglob("predictions_*.npz"))
    if result.rc == 0 and len(now) <= len(first):
        return f"the first output was overwritten: {now}"
    return None


def attacks() -> list[Attack]:
    """``biva predict``'s attacks."""
    return [
        _count("--batch-size", "-3"), _count("--batch-size", "0"),
        _count("--n-examples", "-2"), _count("--classifier-draws", "0"),
        _array("NaN floats", images=np.full((3, 28, 28), np.nan, np.float32)),
        _array("strings", images=np.array([["a"] * 28] * 28)[None].repeat(2, 0)),
        _array("complex", images=np.zeros((2, 28, 28), np.complex64)),
        _array("labels 9000 and -1", images=np.zeros((2, 28, 28), np.uint8),
               labels=np.array([9000, -1])),
        _array("no images key", pixels=np.zeros((2, 28, 28), np.uint8)),
        _array("wrong shape 3x32x32", images=np.zeros((2, 3, 32, 32), np.uint8)),
        Attack("a truncated npz", "predict", "damaged file", _truncated),
        Attack("--npz a FIFO", "predict", "FIFO", _fifo_npz, timeout=60),
        Attack("--npz a folder", "predict", "not a file",
               lambda w: [*PREDICT, "--npz", str(w)]),
        Attack("--images with a FIFO f.png", "predict", "FIFO among the images", _fifo_image,
               expect=(0,), check=_fifo_image_check, timeout=120),
        Attack("1,000 images (baseline)", "predict", "memory baseline", _large(1000),
               expect=(0,)),
        Attack("300,000 images", "predict", "memory flat in the number of images",
               _large(300_000), expect=(0,), timeout=900, max_mb=1200),
        Attack("the same predict twice", "predict", "an earlier output in the way", _twice,
               expect=(0, 2), check=_twice_check),
    ]
