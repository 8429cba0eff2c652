"""L_k evaluation throughput: ``biva.importance_weighted_bound`` against K sequential passes.

Prints one JSON line: test images per second for L_k (k = 1000 by default) on static-MNIST test
images, for the fused chunked evaluation (bf16 + channels-last by default, and plain fp32 NCHW)
and for the reference implementation's method, K sequential fp32 forward passes of a batch of
``--seq-batch`` test images (48, as the reference measured). The sequential baseline is timed
on ``--seq-passes`` passes (interleaved with the fused runs) and scaled to K: its per-pass cost
does not depend on K. All figures are test images per second for the whole L_k.

    python benchmarks/bench_eval.py --samples 1000 --n 4
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
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


@torch.no_grad()
def sequential_bound(model, x: torch.Tensor, passes: int) -> torch.Tensor:
    """The reference's L_k: one forward pass per importance sample, log-sum-exp at the end."""
    model.eval()
    lw = torch.stack([model(x).log_weight.double() for _ in range(passes)])
    return torch.logsumexp(lw, 0) - math.log(passes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="binary")
    p.add_argument("--samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--n", type=int, default=0, help="test images (0: 4 on CPU, 100 on CUDA)")
    p.add_argument("--seq-batch", type=int, default=48,
                   help="test images per sequential pass of the baseline")
    p.add_argument("--max-batch", type=int, default=0,
                   help="rows of one fused pass (0: importance_weighted_bound's default)")
    p.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seq-passes", type=int, default=0,
                   help="sequential passes timed for the baseline (0: min(k, 20))")
    p.add_argument("--run-dir", default=None,
                   help="a trained biva run to evaluate (default: a freshly initialized model)")
    p.add_argument("--data-root", default=None)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    n = args.n or (100 if device.type == "cuda" else 4)
    k = args.samples
    if args.quick:
        n, k, args.seq_batch = min(n, 2), min(k, 50), min(args.seq_batch, 8)
    seq_passes = args.seq_passes or min(k, 5 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 3)

    from biva import HierarchicalVAE, importance_weighted_bound, preset
    from biva.nn.blocks import use_channels_last

    if args.run_dir:
        from biva.runs.loading import load_trained

        plain, run_cfg, _ = load_trained(args.run_dir, "best", device)
        args.preset = f"{args.run_dir} ({run_cfg.model.description or 'trained'})"
        cfg = run_cfg.model
    else:
        cfg = preset(args.preset)
        init, _ = model_input(cfg, 256, args.data_root, "train")
        torch.manual_seed(0)
        plain = HierarchicalVAE(cfg)
        plain.initialize(init)
    x_seq, source = model_input(cfg, args.seq_batch, args.data_root, "test")
    x = x_seq[:n]
    plain = plain.to(device).eval()
    fast = use_channels_last(copy.deepcopy(plain), args.channels_last)
    x, x_seq = x.to(device), x_seq.to(device)
    kwargs = {"max_batch": args.max_batch} if args.max_batch else {}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def fused_fast():
        with amp:
            return importance_weighted_bound(fast, x, k, **kwargs)

    start = machine(device)
    fns = {"fused": fused_fast,
           "fused_plain": lambda: importance_weighted_bound(plain, x, k, **kwargs),
           "sequential": lambda: sequential_bound(plain, x_seq, seq_passes)}
    times = interleaved(fns, reps, device, warmup=0 if not args.quick else 1)
    with PeakMemory(device) as mem:
        torch.manual_seed(0)
        lk_fast = fused_fast()
    torch.manual_seed(0)
    lk_plain = importance_weighted_bound(plain, x, k, **kwargs)
    seq_s = median(times["sequential"]) * k / seq_passes  # K passes over seq_batch images
    fused_s, plain_s = median(times["fused"]), median(times["fused_plain"])
    from biva.objectives.importance import samples_per_pass

    max_batch = args.max_batch or inspect.signature(
        importance_weighted_bound).parameters["max_batch"].default
    emit({
        "bench": "eval_lk", "preset": args.preset, "k": k, "n_images": n, "data": source,
        "dtype": "bf16-autocast (log-weights fp32, sums fp64)" if args.amp == "bf16" else "fp32",
        "memory_format": "channels_last" if args.channels_last else "nchw",
        "max_batch": max_batch, "rows_per_pass": n * samples_per_pass(k, n, max_batch, device),
        "machine": start, "load_avg_end": machine(device)["load_avg"],
        "images_per_s": round(n / fused_s, 4), "sample_rows_per_s": round(n * k / fused_s, 1),
        "seconds": round(fused_s, 2), "seconds_all": [round(t, 2) for t in times["fused"]],
        "fused_plain_fp32_images_per_s": round(n / plain_s, 4),
        "sequential_images_per_s": round(args.seq_batch / seq_s, 4),
        "sequential_batch": args.seq_batch, "sequential_seconds_for_k": round(seq_s, 1),
        "sequential_passes_timed": seq_passes,
        "speedup_vs_sequential": round((n / fused_s) / (args.seq_batch / seq_s), 2),
        "speedup_fused_plain_vs_sequential": round((n / plain_s) / (args.seq_batch / seq_s), 2),
        "L_k_mean_nats": round(float(lk_fast.mean()), 3),
        "L_k_plain_mean_nats": round(float(lk_plain.mean()), 3),
        "peak_mem_mib": mem.mib,
    })


if __name__ == "__main__":
    main()
