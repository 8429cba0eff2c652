"""SIGTERM as an exception in the commands, so that a scheduler's stop unwinds like Ctrl-C.

Python's default SIGTERM action ends the process at once: a CSV or figure being written stays
behind as a temporary and no ``with`` block runs its exit. :func:`sigterm_unwinds` raises
:class:`Terminated` instead, so every atomic writer removes its temporary, locks are released,
and the command exits 143 with one line. Training installs its own handler inside this one
(:class:`biva.training.stopping.StopSignals`: a checkpoint at the next step boundary).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM received: the command stopped; nothing it was writing was left half-written."""

    signum = int(signal.SIGTERM)


_MESSAGE = ("SIGTERM: stopped; files being written were removed, earlier outputs are as they "
            "were")
_deferring = 0            # depth of deferred() blocks in progress
_pending = False          # a SIGTERM arrived inside one


def _raise_terminated(signum, frame) -> None:
    global _pending
    if _deferring:
        _pending = True
        return
    raise Terminated(_MESSAGE)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A SIGTERM arriving inside the block is raised at its end, not inside: for the few
    statements in which a resource changes owner (a file descriptor becoming a file object),
    where an exception would leave it owned twice or by no one."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _pending and not _deferring:
        _pending = False
        raise Terminated(_MESSAGE)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
