"""Choosing the training precision: ``train.amp = auto`` picks bf16 autocast where the hardware
computes bf16 natively and fp32 elsewhere.

Native bf16: CUDA devices of compute capability >= 8.0 (Ampere and newer), and CPUs with
AVX-512 BF16 or AMX (the oneDNN kernels then run bf16 matmuls and convolutions at 2-4x the
fp32 rate). Elsewhere bf16 is emulated and slower than fp32, so auto keeps fp32. Under bf16 the
latent heads, the bound and its log-densities stay float32 (see ``biva.nn.weightnorm``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "none", "bf16")


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native-bf16 feature flags found in /proc/cpuinfo (empty if none or unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    return ()


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """("bf16" or "none", why) for ``train.amp`` on ``device``; "auto" decides by hardware."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: expected one of {AMP_CHOICES}, found {amp!r}")
    if amp != "auto":
        return amp, "set explicitly"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"auto: CUDA compute capability {major}.{minor} has native bf16"
        return "none", f"auto: CUDA compute capability {major}.{minor} < 8.0 (no native bf16)"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return "bf16", f"auto: CPU has native bf16 ({', '.join(flags)})"
        return "none", "auto: CPU without AVX-512 BF16 / AMX (bf16 would be emulated)"
    return "none", f"auto: no native-bf16 rule for device type {device.type!r}"
