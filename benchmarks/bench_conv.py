"""Conv peak probe: GFLOP/s of one 3x3 convolution of a preset's size (fp32 NCHW/CL, bf16 CL).

Prints one JSON line. ``bench_train.py`` runs the same probe in its own process to report the
training step's share of it.

    python benchmarks/bench_conv.py --preset binary --batch 48
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, conv_peak, emit, machine, setup  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="binary")
    p.add_argument("--batch", type=int, default=0, help="0: 48 binary, 8 other presets")
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)

    from biva import preset

    cfg = preset(args.preset)
    batch = args.batch or (48 if args.preset.startswith("binary") else 8)
    channels, size = cfg.per_layer("filters")[-1], cfg.spatial_sizes()[1]
    start = machine(device)
    probe = conv_peak(batch, channels, size, device, reps=args.reps or (3 if args.quick else 7))
    emit({"bench": "conv_peak", "preset": args.preset, "shape": [batch, channels, size, size],
          "kernel": 3, "machine": start, "load_avg_end": machine(device)["load_avg"],
          "gflops": probe})


if __name__ == "__main__":
    main()
