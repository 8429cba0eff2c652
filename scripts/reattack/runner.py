"""The attack runner: one real ``biva`` process per attack, under a wall-clock limit, its peak
resident memory read from the kernel (``wait4``), its standard error searched for a traceback,
and a check of what is on disk afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIVA = str(Path(sys.executable).with_name("biva"))


@dataclass
class Result:
    """What one attacked process did: exit status (None: killed at the time limit), seconds,
    peak RSS in MB, and its standard output and error."""

    rc: int | None
    seconds: float
    peak_mb: float
    out: str
    err: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if ": error:" in line]


@dataclass
class Attack:
    """A fault and what must follow. ``setup(work)`` builds the fault in its own folder and
    returns the ``biva`` arguments; ``check(work, result)`` returns what is wrong on disk
    (or in the output) after it, or None. ``expect``: the allowed exit statuses (2: refused
    in one line; 0: handled)."""

    name: str
    surface: str
    fault: str
    setup: Callable[[Path], list[str]]
    expect: tuple[int, ...] = (2,)
    check: Callable[[Path, Result], str | None] | None = None
    timeout: float = 180.0
    max_mb: float = 2000.0
    signal_after: float | None = None    # send SIGTERM this many seconds after the start
    user: int | None = None               # run as this uid and gid (setpriv), e.g. 65534
    notes: list[str] = field(default_factory=list)


def run_process(argv: list[str], cwd: Path, timeout: float, signal_after: float | None = None,
                user: str | None = None) -> Result:
    """Run ``biva *argv`` in ``cwd``; kill its process group at ``timeout`` seconds."""
    cmd = [BIVA, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        env["HOME"] = "/tmp"
    out_f, err_f = cwd / ".attack.out", cwd / ".attack.err"
    start = time.monotonic()
    with open(out_f, "w") as so, open(err_f, "w") as se:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=so, stderr=se, env=env,
                                start_new_session=True)
        rc, usage, signalled = None, None, False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            elapsed = time.monotonic() - start
            if signal_after is not None and not signalled and elapsed >= signal_after:
                os.kill(proc.pid, signal.SIGTERM)
                signalled = True
            if elapsed > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = rc if rc is not None else -9
    seconds = time.monotonic() - start
    return Result(rc, seconds, usage.ru_maxrss / 1024, out_f.read_text(errors="replace"),
                  err_f.read_text(errors="replace"))


def verdict(attack: Attack, work: Path, result: Result) -> list[str]:
    """Every way the attack got through: a hang, a traceback, an unexpected exit, memory over
    its bound, a refusal that is not one line, or the check's finding."""
    problems = []
    if result.rc is None:
        problems.append(f"hang: killed after {attack.timeout:.0f} s")
    elif result.rc not in attack.expect:
        problems.append(f"exit {result.rc}, expected {attack.expect}")
    if result.traceback:
        problems.append("traceback")
    if result.peak_mb > attack.max_mb:
        problems.append(f"peak RSS {result.peak_mb:.0f} MB > {attack.max_mb:.0f} MB")
    if result.rc == 2 and 2 in attack.expect and len(result.error_lines) != 1:
        problems.append(f"{len(result.error_lines)} error lines, expected one")
    if attack.check is not None and result.rc is not None:
        found = attack.check(work, result)
        if found:
            problems.append(found)
    return problems
