"""The machine a result was measured on: CPU model, cores, torch version and load, so that
CPU-time figures from different machines are never put side by side."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe_machine() -> dict:
    """{"cpu", "cores", "torch", "load_1min"}: the machine and its load average now (runnable
    processes over the last minute; about ``cores`` or more means a busy machine)."""
    import torch

    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "load_1min": load}


def same_machine(a: dict | None, b: dict | None) -> bool:
    """Whether two ``describe_machine`` records name the same kind of machine (CPU model and
    cores; a record that is missing matches nothing)."""
    if not a or not b:
        return False
    return (a.get("cpu"), a.get("cores")) == (b.get("cpu"), b.get("cores"))


def threads_for_load(cores: int, load_1min: float | None, default: int) -> int:
    """CPU threads for a process that was told "auto" (``--threads 0``): ``default`` (torch's),
    but no more than the cores other processes leave idle (cores minus the 1-minute load,
    rounded; at least 1). Two threads on a 2-core machine whose other core is busy spin-wait
    on each other: a 4-CPU-minute photo run took 19 steps instead of about 150."""
    if load_1min is None:
        return default
    return max(1, min(default, cores - round(load_1min)))


def auto_threads() -> tuple[int, str]:
    """:func:`threads_for_load` on this machine now, and a line that says why."""
    import torch

    cores, default = os.cpu_count() or 1, torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    n = threads_for_load(cores, load, default)
    why = (f"threads: {n} (auto: {cores} cores, load {load:.1f} from other processes; "
           "--threads N to choose)" if load is not None else f"threads: {n}")
    return n, why


def limit_threads_to_idle_cores() -> str | None:
    """For ``--threads 0`` on CPU: lower torch's thread count to :func:`auto_threads` when the
    machine is busy; returns the line that says so (None when nothing changed)."""
    import torch

    threads, why = auto_threads()
    if threads >= torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return why
