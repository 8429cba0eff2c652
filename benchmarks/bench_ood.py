"""Anomaly-score sweep: images/s of every L^{>k} and LLR^{>k} (k = 0..L-1) for a batch, with
the bottom-up pass shared by all k against one full pass per k, timed interleaved.

Prints one JSON line. Both paths draw the same number of samples per k; the shared one runs
the bottom-up stages once per batch instead of L times (for BIVA, and the VAE, that includes
the z^BU draws).

    python benchmarks/bench_ood.py --preset binary-cpu --n 100 --scores lk,llr,llr_mean
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, emit, interleaved, machine, median, model_input, setup  # noqa: E402,I001


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="binary-cpu")
    p.add_argument("--variant", default="biva")
    p.add_argument("--n", type=int, default=100, help="images per call")
    p.add_argument("--scores", default="lk,llr", help="scores to compute (see biva ood)")
    p.add_argument("--data-root", default=None)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    n = min(args.n, 8) if args.quick else args.n
    reps = args.reps or (1 if args.quick else 5)

    from biva import HierarchicalVAE, preset
    from biva.ood.scores import bound_sweep, needed_bounds, parse_scores

    cfg = preset(args.preset, variant=args.variant)
    x, source = model_input(cfg, n, args.data_root)
    torch.manual_seed(0)
    model = HierarchicalVAE(cfg)
    model.initialize(x[:64])
    model = model.to(device).eval()
    x = x.to(device)
    ks = list(range(model.n_layers))
    scores = parse_scores(args.scores)
    fns = {"shared": lambda: bound_sweep(model, x, ks, scores=scores),
           "per_k": lambda: bound_sweep(model, x, ks, scores=scores, share_bottom_up=False)}
    start = machine(device)
    times = interleaved(fns, reps, device)
    shared, per_k = median(times["shared"]), median(times["per_k"])
    passes = len(needed_bounds(scores, ks))
    emit({"bench": "ood_sweep", "preset": args.preset, "variant": args.variant, "n": n,
          "data": source, "scores": scores, "ks": ks, "td_passes_per_batch": passes,
          "machine": start, "load_avg_end": machine(device)["load_avg"],
          "shared_images_per_s": round(n / shared, 1),
          "per_k_images_per_s": round(n / per_k, 1),
          "speedup": round(per_k / shared, 2)})


if __name__ == "__main__":
    main()
