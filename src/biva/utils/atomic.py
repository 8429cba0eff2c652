"""Crash-safe writes of files and directories.

Readers (and a run resumed after a crash or power loss) see either the complete old content or the
complete new content, never a torn file: data goes to a temporary sibling in the same directory
(so the final rename cannot cross filesystems), is fsynced, and is then renamed over the target.
Temporary names start with ``.`` so directory listings that look for real entries skip them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import secrets
import shutil
import stat
import warnings
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path, PurePath
from typing import IO, Any

from biva.utils.signals import deferred

StrPath = str | os.PathLike[str]

__all__ = [
    "DISK_FULL_ERRNOS",
    "is_disk_full",
    "raise_if_disk_full",
    "atomic_directory",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
]

_MAX_NAME_TRIES = 100
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How writers that are not Python's own report ENOSPC / EDQUOT (safetensors' Rust I/O:
# "No space left on device (os error 28)").
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28",
                   "os error 122")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the file system is full (or the quota spent): an OSError with
    ENOSPC/EDQUOT, or another library's error carrying the same OS error in its text."""
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    return any(t in str(err) for t in _DISK_FULL_TEXT)


def raise_if_disk_full(err: BaseException, path: StrPath) -> None:
    """Raise a disk-full ``err`` of any library as ``OSError(ENOSPC, ..., path)``, so one
    handler, naming the file being written, covers every writer; return for any other error."""
    if is_disk_full(err):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def fsync_directory(path: StrPath) -> None:
    """Flush a directory entry (new/renamed names inside it) to disk; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. Windows cannot open directories; rename durability is the OS's job there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_exclusive(path: Path) -> tuple[int, Path]:
    for _ in range(_MAX_NAME_TRIES):
        candidate = _temp_sibling(path, "tmp")
        try:
            # Mode 0o666 lets the process umask decide permissions, like a plain open() would
            # (tempfile.mkstemp would force 0o600 on the final file).
            fd = os.open(
                candidate,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                0o666,
            )
        except FileExistsError:
            continue
        return fd, candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_open(
    path: StrPath, mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` only on success.

    ``mode`` is ``"w"`` (text) or ``"wb"``. If the body raises, ``path`` keeps its old content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    text = mode == "w"
    fd, tmp, f = -1, None, None
    try:
        with deferred():   # a SIGTERM here would leave the descriptor owned twice or not at all
            fd, tmp = _open_exclusive(path)
            f = os.fdopen(fd, mode, encoding=encoding if text else None,
                          newline="" if text else None)
        with f:
            with contextlib.suppress(FileNotFoundError):
                # Replacing a file should not silently change its permissions.
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if f is not None:
            f.close()
        elif fd >= 0:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise_if_disk_full(err, path)  # name the file being replaced, not the temporary
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temp file, fsync, rename, fsync directory)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: StrPath, text: str, *, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text``, written byte-exactly (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def to_plain(value: Any, where: str = "", nonfinite: list[str] | None = None, *,
             encode_nonfinite: bool = True, arrays: bool = True) -> Any:
    """``value`` as plain JSON types, the one converter of results and configs: dataclasses
    (their init fields) and mappings become dicts, enums their value, paths strings, 0-d
    tensors and NumPy scalars numbers, and (``arrays``) larger ones nested lists. With
    ``encode_nonfinite``, non-finite floats become "NaN" / "Infinity" / "-Infinity" (their
    paths appended to ``nonfinite``), so the result is strict JSON that any parser accepts."""
    def again(v: Any, w: str) -> Any:
        return to_plain(v, w, nonfinite, encode_nonfinite=encode_nonfinite, arrays=arrays)

    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, Enum):
        return value
    if isinstance(value, float):
        if math.isfinite(value) or not encode_nonfinite:
            return value
        if nonfinite is not None:
            nonfinite.append(where)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Only init fields: a config read back passes them to the constructor.
        return {f.name: again(getattr(value, f.name), f"{where}.{f.name}" if where else f.name)
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Enum):
        return again(value.value, where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where or '<root>'}: key {k!r} is not a string")
            out[k] = again(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [again(v, f"{where}[{i}]") for i, v in enumerate(value)]
    # Duck-typed so that torch is not needed here: tensors and NumPy scalars/arrays.
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return again(value.item(), where)
    if arrays and callable(getattr(value, "tolist", None)):
        return again(value.tolist(), where)
    raise TypeError(f"{where or '<root>'}: cannot write a {type(value).__name__} as JSON")


def atomic_write_json(
    path: StrPath, obj: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> None:
    """Atomically write ``obj`` as strict JSON followed by a newline; keys in insertion order
    unless ``sort_keys``.

    Non-finite floats (a bound over one example has no standard error) are written as the
    strings "NaN" / "Infinity" / "-Infinity", as in the JSON Lines logs, with a warning that
    names them. Serialization happens first, so an unserializable ``obj`` leaves ``path``
    untouched.
    """
    nonfinite: list[str] = []
    plain = to_plain(obj, Path(path).name, nonfinite)
    if nonfinite:
        shown = ", ".join(nonfinite[:5]) + (f" and {len(nonfinite) - 5} more"
                                            if len(nonfinite) > 5 else "")
        warnings.warn(f"{path}: non-finite values written as strings: {shown}", stacklevel=2)
    text = json.dumps(plain, indent=indent, sort_keys=sort_keys, allow_nan=False,
                      ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def _make_temp_dir(final: Path) -> Path:
    for _ in range(_MAX_NAME_TRIES):
        candidate = _temp_sibling(final, "tmp")
        try:
            candidate.mkdir(mode=0o777)  # umask applies, as for a plain mkdir
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary directory next to {final}")


def _fsync_tree(root: Path) -> None:
    # Writers inside the directory (e.g. safetensors) do not fsync; without this a power loss
    # after the rename could leave a correctly named directory holding empty files.
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            file_path = os.path.join(dirpath, name)
            if os.path.islink(file_path):
                continue
            fd = os.open(file_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        fsync_directory(dirpath)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_directory(final_path: StrPath) -> Iterator[Path]:
    """Yield a temporary directory next to ``final_path``; on success it becomes ``final_path``.

    An existing one is renamed aside, then deleted; if the body raises, nothing changes.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_dir(final)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old: Path | None = None
    if final.exists() or final.is_symlink():
        # POSIX cannot rename a directory over a non-empty one, so move the old one out of the
        # way first; the window without `final` is two renames long and only hit on overwrite.
        old = _temp_sibling(final, "old")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(final.parent)
    if old is not None:
        _remove_path(old)


#: The name a staged output folder carries until it is complete.
INCOMPLETE = ".incomplete"
_REPLACED = ".replaced"
_MARKER = ".biva-output"


@contextlib.contextmanager
def staged_directory(path: StrPath, *, written_by: str,
                     earlier: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a folder's new set of files beside it and swap it in at the end.

    Yields ``<path>.incomplete``; when the block ends without an error, the old ``path`` (if
    any) becomes ``<path>.replaced``, the new set becomes ``path`` and the old set is removed.
    A reader of ``path`` sees the old set or the new one, never a mix; a crash, kill or full
    disk leaves ``path`` as it was and the half-written set under a name that says so (the
    next run clears it). A folder that biva did not write (no ``.biva-output`` marker and none
    of the ``earlier`` file names of older versions' outputs) is refused, never replaced.
    ``written_by``: what the marker records (e.g. "biva ood"). Hold the output's lock around
    it (:func:`biva.utils.run_lock.output_lock`)."""
    path = Path(path)
    stage, old = path.with_name(path.name + INCOMPLETE), path.with_name(path.name + _REPLACED)
    if not path.exists() and old.is_dir():
        os.rename(old, path)          # killed between the two renames: the old set is back
    check_output_folder(path, earlier)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    (stage / _MARKER).write_text(json.dumps({"written_by": written_by}) + "\n")
    yield stage
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.rename(path, old)
    os.rename(stage, path)
    shutil.rmtree(old, ignore_errors=True)


def check_output_folder(path: StrPath, earlier: tuple[str, ...] = ()) -> None:
    """Refuse (ValueError, one line) an existing ``path`` that :func:`staged_directory` would
    not replace: a file, or a folder of files biva did not write. Call it before long work."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; choose another output folder")
    names = {p.name for p in path.iterdir()}
    if names and _MARKER not in names and not names & set(earlier):
        raise ValueError(f"{path}: holds files biva did not write ({sorted(names)[:3]}...); "
                         "an output folder is replaced as a whole: choose a new or empty one")
