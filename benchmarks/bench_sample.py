"""Sampling throughput: images/s of ``model.sample(n)`` (the top-down pass and p(x|z)'s mean).

Prints one JSON line: the configured path (bf16 + channels-last by default) against plain fp32
NCHW, timed interleaved in the same process.

    python benchmarks/bench_sample.py --preset binary --n 256
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PeakMemory,
    add_common_args,
    emit,
    interleaved,
    machine,
    median,
    model_input,
    setup,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="binary")
    p.add_argument("--n", type=int, default=0, help="images per call (0: 256 CPU, 1024 CUDA)")
    p.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--data-root", default=None)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    n = args.n or (1024 if device.type == "cuda" else 256)
    if args.quick:
        n = min(n, 16)
    reps = args.reps or (1 if args.quick else 5)

    from biva import HierarchicalVAE, preset
    from biva.nn.blocks import use_channels_last

    cfg = preset(args.preset)
    init, _ = model_input(cfg, 64, args.data_root)
    torch.manual_seed(0)
    plain = HierarchicalVAE(cfg)
    plain.initialize(init)
    plain = plain.to(device).eval()
    fast = use_channels_last(copy.deepcopy(plain), args.channels_last)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def sample_fast():
        with amp:
            return fast.sample(n)

    start = machine(device)
    times = interleaved({"fast": sample_fast, "plain": lambda: plain.sample(n)}, reps, device)
    with PeakMemory(device) as mem:
        sample_fast()
    fast_s, plain_s = median(times["fast"]), median(times["plain"])
    emit({
        "bench": "sample", "preset": args.preset, "n": n,
        "dtype": "bf16-autocast" if args.amp == "bf16" else "fp32",
        "memory_format": "channels_last" if args.channels_last else "nchw",
        "machine": start, "load_avg_end": machine(device)["load_avg"],
        "images_per_s": round(n / fast_s, 1), "seconds_all": [round(t, 3) for t in times["fast"]],
        "plain_fp32_nchw_images_per_s": round(n / plain_s, 1),
        "speedup_vs_plain": round(plain_s / fast_s, 2), "peak_mem_mib": mem.mib,
    })


if __name__ == "__main__":
    main()
