"""Append-only JSON Lines metric logs that survive crashes and resumes.

Every line is one JSON object, written with a single ``write`` and fsynced. Values are converted
to plain JSON: 0-d tensors and NumPy scalars become Python numbers (``float`` for floating dtypes,
``int``/``bool`` for integer/bool dtypes), larger tensors and arrays become nested lists.

Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the
spellings Python's ``json`` uses for its non-standard tokens) so every line is strict JSON that any
parser accepts, while a diverged run's log still shows whether a loss was NaN or overflowed.
:func:`read_jsonl` turns those exact strings back into floats unless ``decode_nonfinite=False``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from biva.utils.atomic import atomic_write_bytes, to_plain

StrPath = str | os.PathLike[str]

__all__ = ["JsonlError", "append_jsonl", "read_jsonl", "truncate_jsonl_after_step"]

_DECODE_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JsonlError(ValueError):
    """A corrupt line in a JSON Lines file; the message names the file and line number."""


def _repair_tail(f: Any) -> None:
    # A crash mid-append leaves a final line without "\n"; appending straight after it would glue
    # two records into one corrupt middle line. Drop the fragment (or terminate it if complete).
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = size
    block = 4096
    while start > 0:
        lo = max(0, start - block)
        f.seek(lo)
        chunk = f.read(start - lo)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    f.seek(start)
    tail = f.read()
    try:
        complete = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        complete = False
    if complete:
        f.write(b"\n")
    else:
        f.truncate(start)


def append_jsonl(path: StrPath, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync; NaN/inf become "NaN"/"Infinity"/"-Infinity".

    The parent directory is created if needed; a truncated last line from a crash is dropped first.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a mapping, got {type(record).__name__}")
    line = json.dumps(to_plain(record, "record"), allow_nan=False, ensure_ascii=False,
                      separators=(",", ":"))
    data = (line + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unbuffered, so a failed write is not retried by close() after the line is dropped.
    with open(path, "a+b", buffering=0) as f:
        _repair_tail(f)
        start = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        except OSError:
            # A full disk may have taken part of the line: drop it (truncating needs no
            # space), so the file ends with the last complete record.
            f.seek(start)
            with contextlib.suppress(OSError):
                f.truncate(start)
            raise


def _decode_nonfinite(value: Any) -> Any:
    if isinstance(value, str):
        return _DECODE_NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _decode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_nonfinite(v) for v in value]
    return value


def _iter_lines(path: Path, data: bytes) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """Yield (line number, raw line with newline, parsed object); stops at a truncated tail."""
    lines = data.splitlines(keepends=True)
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        terminated = raw.endswith(b"\n")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if not terminated:  # only the very last line can lack its newline
                warnings.warn(f"{path}:{lineno}: ignoring truncated final line "
                              "(interrupted write)", RuntimeWarning, stacklevel=3)
                return
            raise JsonlError(f"{path}:{lineno}: corrupt line: {e}") from e
        if not isinstance(obj, dict):
            raise JsonlError(f"{path}:{lineno}: expected a JSON object, "
                             f"found {type(obj).__name__}")
        yield lineno, raw if terminated else raw + b"\n", obj


def read_jsonl(path: StrPath, *, decode_nonfinite: bool = True) -> list[dict[str, Any]]:
    """Read all records; a truncated final line (crash mid-write) is skipped with a warning.

    A corrupt line anywhere else raises :class:`JsonlError` naming the file and line number.
    """
    path = Path(path)
    records = [obj for _, _, obj in _iter_lines(path, path.read_bytes())]
    if decode_nonfinite:
        records = [_decode_nonfinite(r) for r in records]
    return records


def truncate_jsonl_after_step(path: StrPath, step: int) -> int:
    """Atomically drop records whose ``"step"`` exceeds ``step`` (and a truncated tail).

    Records without ``"step"`` are kept. Returns how many were dropped (0 for a missing file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    kept: list[bytes] = []
    dropped = 0
    for lineno, raw, obj in _iter_lines(path, data):
        s = obj.get("step")
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))):
            raise JsonlError(f"{path}:{lineno}: 'step' is {s!r}, not a number")
        if s is not None and s > step:
            dropped += 1
        else:
            kept.append(raw)
    new = b"".join(kept)
    if new != data:
        atomic_write_bytes(path, new)
    return dropped
