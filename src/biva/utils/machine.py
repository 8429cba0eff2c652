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
