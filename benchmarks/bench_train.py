"""Training throughput: images/s of ``Trainer.train_step`` (forward + backward + Adamax + EMA).

Prints one JSON line: the configured step against the plain one (fp32, NCHW, eager), timed
interleaved in the same process; FLOPs per image (FlopCounterMode), the achieved GFLOP/s as a
share of a 3x3 conv of the preset's size measured in the same run (fp32 and bf16), the peak
memory of a step, and the ratio to the public reference implementation's figure.

    python benchmarks/bench_train.py --preset binary --batch 48 --amp bf16
    python benchmarks/bench_train.py --preset natural32 --batch 8 --amp bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PeakMemory,
    add_common_args,
    conv_peak,
    count_flops,
    emit,
    interleaved,
    machine,
    median,
    model_input,
    process_peak_rss_mib,
    setup,
)

# The public reference implementation on a 2-core CPU (issue 8): images/s at this batch.
REFERENCE_CPU = {("binary", 48): 7.4, ("natural32", 8): 0.8}


def make_trainer(preset: str, x: torch.Tensor, run_dir: Path, device: torch.device, **train):
    """A real Trainer on an in-memory dataset made of ``x`` (no files read)."""
    from biva.config.run import resolve_config
    from biva.data.types import DatasetSplits, ImageSplit
    from biva.training import Trainer

    cfg = resolve_config({"model": {"preset": preset},
                          "train": {"batch_size": x.shape[0], "init_batch": x.shape[0],
                                    "device": str(device), "progress": False, "steps": 10**6,
                                    "warmup_steps": 1,
                                    # every step takes the update (a skipped one is cheaper)
                                    "skip_threshold": 1e30, **train}})
    binary = cfg.model.likelihood == "bernoulli"
    # Back to the stored format (uint8 {0,1} or 0..255); the trainer converts it again.
    images = (x if binary else (x + 1) * 127.5).round().to(torch.uint8)
    split = ImageSplit(images)
    data = DatasetSplits("bench", split, split, split, "binary" if binary else "8bit",
                         "static" if binary else None, None)
    return Trainer(cfg, run_dir, data=data)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="binary", help="model preset (binary, natural32, ...)")
    p.add_argument("--batch", type=int, default=0, help="global batch (0: 48 binary, 8 other)")
    p.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="train.compile (timed separately)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain fp32 step")
    p.add_argument("--data-root", default=None)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    batch = args.batch or (48 if args.preset.startswith("binary") else 8)
    if args.quick:
        batch = min(batch, 8)
    reps = args.reps or (1 if args.quick else 5)

    from biva import preset

    cfg = preset(args.preset)
    x, source = model_input(cfg, batch, args.data_root)
    x = x.to(device)
    variants = {"fast": {"amp": args.amp, "channels_last": args.channels_last,
                         "compile": args.compile,
                         "grad_checkpointing": args.grad_checkpointing}}
    if not args.no_baseline:
        variants["plain"] = {"amp": "none", "channels_last": False, "compile": False,
                             "grad_checkpointing": False}
    start_load = machine(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: make_trainer(args.preset, x, Path(tmp) / name, device, **opts)
                    for name, opts in variants.items()}
        params = sum(p.numel() for p in trainers["fast"].model.parameters())
        compile_s = None
        if args.compile:  # the first call compiles: time it apart from the steps
            t = time.perf_counter()
            trainers["fast"].train_step(x)
            compile_s = round(time.perf_counter() - t, 1)
        # FLOPs of one step (forward + backward; the optimizer's are negligible).
        plain = trainers.get("plain", trainers["fast"])
        flops = count_flops(lambda: plain.train_step(x))
        times = interleaved({name: (lambda t=t: t.train_step(x)) for name, t in trainers.items()},
                            reps, device)
        memory = {}
        for name, t in trainers.items():
            with PeakMemory(device) as mem:
                t.train_step(x)
            memory[name] = mem.mib
        skipped = {name: t.guard.skipped for name, t in trainers.items()}
    probe = conv_peak(batch, cfg.per_layer("filters")[1 if cfg.n_layers > 1 else 0],
                      cfg.spatial_sizes()[1], device, reps=3 if args.quick else 7,
                      group_gflop=0.5 if args.quick else 20.0)
    step_s = {name: median(t) for name, t in times.items()}
    ips = {name: batch / s for name, s in step_s.items()}
    gflops = flops / step_s["fast"] / 1e9
    peak_key = "bf16_cl" if args.amp == "bf16" else ("fp32_cl" if args.channels_last
                                                    else "fp32_nchw")
    ref = REFERENCE_CPU.get((args.preset, batch)) if device.type == "cpu" else None
    emit({
        "bench": "train", "preset": args.preset, "params_m": round(params / 1e6, 2),
        "batch": batch, "data": source, "dtype": "bf16-autocast" if args.amp == "bf16"
        else "fp32", "memory_format": "channels_last" if args.channels_last else "nchw",
        "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
        "machine": start_load, "load_avg_end": machine(device)["load_avg"],
        "images_per_s": round(ips["fast"], 2), "step_s": round(step_s["fast"], 3),
        "step_s_all": [round(v, 3) for v in times["fast"]],
        "plain_fp32_nchw_images_per_s": round(ips["plain"], 2) if "plain" in ips else None,
        "speedup_vs_plain": round(ips["fast"] / ips["plain"], 2) if "plain" in ips else None,
        "gflop_per_image": round(flops / batch / 1e9, 3), "achieved_gflops": round(gflops, 1),
        "conv_peak_gflops": probe, "share_of_conv_peak": round(gflops / probe[peak_key], 3),
        "share_of_conv_peak_vs": peak_key,
        "share_of_bf16_conv_peak": round(gflops / probe["bf16_cl"], 3),
        "peak_mem_mib": memory, "process_peak_rss_mib": process_peak_rss_mib(),
        "compile_s": compile_s, "skipped_updates": skipped,
        "reference_images_per_s": ref,
        "ratio_vs_reference": round(ips["fast"] / ref, 2) if ref else None,
    })


if __name__ == "__main__":
    main()
