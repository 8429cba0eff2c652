"""Attacks on ``biva detect`` (the shipped photos32 model and its detector): FIFOs and odd
names in the folder, hidden files, damaged and oversized images, a full disk and a SIGTERM
while the CSV is written, many images, an unreadable subfolder, two folders of one name."""

from __future__ import annotations

import os
from pathlib import Path

from faults import csv_rows, fill, mount_tmpfs, noise_pngs, photos
from PIL import Image
from runner import Attack, Result, run_process

DETECT = ["detect", "--pretrained", "photos32", "--threads", "1", "--no-progress"]


def _rows(work: Path, n: int, path: str = "out.csv") -> str | None:
    csv_path = work / path
    if not csv_path.is_file():
        return f"no CSV at {path}"
    rows = csv_rows(csv_path)[1:]
    return None if len(rows) == n else f"{len(rows)} CSV rows for {n} images"


def _fifo(work: Path) -> list[str]:
    folder = photos(work / "imgs", 3)
    os.mkfifo(folder / "f.png")
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _odd_names(work: Path) -> list[str]:
    folder = photos(work / "imgs", 5)
    for f, name in zip(sorted(folder.iterdir()), ("a\rb.png", "c,d.png", "=cmd.png",
                                                   'q"q.png', "e\nf.png"), strict=True):
        f.rename(folder / name)
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _odd_check(work: Path, result: Result) -> str | None:
    found = _rows(work, 5)
    if found:
        return found
    cells = [r[0] for r in csv_rows(work / "out.csv")[1:]]
    if any(c.startswith(("=", "+", "-", "@")) for c in cells):
        return "a formula-like cell went out unprefixed"
    names = {Path(c).name for c in cells}
    return None if "c,d.png" in names and "a\rb.png" in names else f"names changed: {names}"


def _hidden(work: Path) -> list[str]:
    folder = photos(work / "imgs", 3)
    good = (folder / "00000.png").read_bytes()
    (folder / ".x.png").write_bytes(good)
    (folder / "._y.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "z.png").write_bytes(good)
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _non_utf8(work: Path) -> list[str]:
    folder = photos(work / "imgs", 3)
    os.rename(folder / "00000.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _bad_image(kind: str) -> Attack:
    def setup(work: Path) -> list[str]:
        folder = photos(work / "imgs", 3)
        if kind == "truncated":
            data = (folder / "00001.png").read_bytes()
            (folder / "00001.png").write_bytes(data[: len(data) // 2])
        elif kind == "text":
            (folder / "00001.png").write_text("not an image")
        else:
            Image.new("1", (20000, 20000)).save(folder / "00001.png")
        return [*DETECT, str(folder), "--out", str(work / "out.csv")]

    def check(work: Path, result: Result) -> str | None:
        if result.rc == 2 and "00001.png" not in result.err:
            return "the error does not name the file"
        if result.rc == 0:
            return _rows(work, 2) if "00001.png" in result.err else "skipped without a word"
        return None
    return Attack(f"a {kind} image", "detect", "damaged or oversized image", setup,
                  expect=(0, 2), check=check, max_mb=1500)


def _full_disk(work: Path) -> list[str]:
    folder = photos(work / "imgs", 40)
    mount_tmpfs(work / "disk", "2m")
    fill(work / "disk", 600)
    return [*DETECT, str(folder), "--out", str(work / "disk" / "out.csv")]


def _no_partial(work: Path, result: Result) -> str | None:
    # The output's lock file stays by design (a flock needs a file that outlives holders).
    left = [p.name for p in (work / "disk").iterdir()
            if p.name != "filler" and not p.name.endswith(".lock")]
    if left:
        return f"left on the full disk: {left}"
    return None if "out.csv" in result.err else "the error does not name the CSV"


def _sigterm(work: Path) -> list[str]:
    folder = noise_pngs(work / "imgs", 1500)
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _sigterm_check(work: Path, result: Result) -> str | None:
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(("out.csv.", ".out.csv"))
                 and not p.name.endswith(".lock")]
    if (work / "out.csv").exists():
        return _rows(work, 1500) or (f"left {leftovers}" if leftovers else None)
    return f"left {leftovers}" if leftovers else None


def _many(work: Path) -> list[str]:
    folder = noise_pngs(work / "imgs", 12000, size=32)
    return [*DETECT, str(folder), "--out", str(work / "out.csv")]


def _unreadable(work: Path) -> list[str]:
    folder = photos(work / "imgs", 3)
    (folder / "locked").mkdir()
    photos(folder / "locked", 2)
    os.chmod(folder / "locked", 0)
    os.chmod(work, 0o777)
    return [*DETECT, str(folder), "--out", "/tmp/reattack_unreadable.csv"]


def _unreadable_check(work: Path, result: Result) -> str | None:
    os.chmod(work / "imgs" / "locked", 0o755)
    return None if "locked" in result.err else "the unreadable subfolder was skipped silently"


def _same_names(work: Path) -> list[str]:
    photos(work / "a" / "imgs", 2)
    photos(work / "b" / "imgs", 3)
    first = run_process([*DETECT, str(work / "a" / "imgs")], work, 300)
    assert first.rc == 0, first.err
    return [*DETECT, str(work / "b" / "imgs")]


def _same_names_check(work: Path, result: Result) -> str | None:
    csvs = sorted((work / "runs" / "pretrained" / "photos32" / "ood").glob("detect_imgs*.csv"))
    counts = sorted(len(csv_rows(p)) - 1 for p in csvs)
    return None if counts == [2, 3] else f"CSVs {[p.name for p in csvs]} with rows {counts}"


def attacks() -> list[Attack]:
    """``biva detect``'s attacks."""
    return [
        Attack("a FIFO named f.png", "detect", "FIFO among the images", _fifo, expect=(0,),
               check=lambda w, r: _rows(w, 3), timeout=180),
        Attack("names with \\r, \\n, comma, quote, leading =", "detect", "odd file names",
               _odd_names, expect=(0,), check=_odd_check),
        Attack("hidden, ._ and hidden-folder files", "detect", "files training skips", _hidden,
               expect=(0,), check=lambda w, r: _rows(w, 3)),
        Attack("a non-UTF-8 file name", "detect", "undecodable name", _non_utf8,
               expect=(0, 2), check=lambda w, r: None if "caf" in r.err or r.rc == 0
               else "the name is not given"),
        _bad_image("truncated"), _bad_image("text"), _bad_image("20000x20000"),
        Attack("CSV onto a full 2 MB tmpfs", "detect", "disk full while writing", _full_disk,
               check=_no_partial),
        Attack("SIGTERM while scoring 1,500 images", "detect", "a scheduler's signal",
               _sigterm, expect=(143, -15, 2, 130), signal_after=25, check=_sigterm_check),
        Attack("12,000 images", "detect", "memory flat in the number of images", _many,
               expect=(0,), check=lambda w, r: _rows(w, 12000), timeout=900, max_mb=1200),
        Attack("an unreadable subfolder (as nobody)", "detect", "permission denied", _unreadable,
               expect=(0,), check=_unreadable_check, user=65534),
        Attack("two folders named imgs", "detect", "one default CSV name", _same_names,
               expect=(0,), check=_same_names_check),
        Attack("an empty folder", "detect", "nothing to score",
               lambda w: [*DETECT, str((w / "empty").mkdir() or w / "empty")]),
        Attack("a folder link loop", "detect", "self -> .",
               lambda w: [*DETECT, str(_loop(w))], expect=(0, 2)),
    ]


def _loop(work: Path) -> Path:
    folder = photos(work / "imgs", 2)
    (folder / "self").symlink_to(".")
    return folder
