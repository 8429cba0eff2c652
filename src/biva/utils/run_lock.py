"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock``.

The kernel drops the lock when its process exits, however it exits (kill -9 included), so a
lock left by a dead process never blocks a resume; only a live writer does. The file records
the holder (pid, host, start time) for the refusal message. Within one process the lock is
shared (a notebook may hold a Trainer and resume another on the same directory). Where
``fcntl`` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}   # resolved run dir -> open file descriptor holding the lock


class RunDirLocked(RuntimeError):
    """Another live process is writing to this run directory."""


def lock_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Take the run directory's writer lock (idempotent in one process).

    Raises :class:`RunDirLocked` naming the holder when another process has it.
    """
    root = Path(run_dir).resolve()
    if fcntl is None or root in _held:
        return
    root.mkdir(parents=True, exist_ok=True)
    _take(root, root / LOCK_FILE, "wait for it to finish or stop it, or pick another run "
                                  "directory")


def _take(key: Path, path: Path, remedy: str, wait_s: float = 0.0) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = _describe(path)
            os.close(fd)
            raise RunDirLocked(f"{key} is in use by another biva process ({holder}); "
                               f"{remedy}") from None
    # Who holds it, for a second process's message; best effort: on a full disk the lock
    # still holds, and the output's own write then fails naming the output.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    _held[key] = fd


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], wait_s: float = 0.0):
    """Hold the writer lock of an output (a folder or a file, via a hidden ``.<name>.lock``
    beside it) for the block: a second process writing the same output is refused (after
    waiting up to ``wait_s`` seconds for the first), naming the holder, instead of
    interleaving or overwriting its files."""
    target = Path(path).resolve()
    if fcntl is None or target in _held:
        yield
        return
    # Beside the output, not in it: an output folder is swapped whole when complete
    # (biva.utils.atomic.staged_directory), and its lock must outlive the swap.
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    _take(target, lock, "wait for it to finish, or choose another --out", wait_s)
    try:
        yield
    finally:
        unlock_run_dir(target)


def unlock_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Release this process's lock on ``run_dir`` (no-op when not held)."""
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder unknown: {path} is unreadable"
