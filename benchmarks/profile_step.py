"""Where the time goes: torch.profiler per op and per module, for a training step or L_k.

Prints one JSON line (top ops by self time, forward time per module group) and, with
``--table``, the profiler's tables on stderr.

    python benchmarks/profile_step.py --what train --preset binary --batch 48 --variant fast
    python benchmarks/profile_step.py --what eval --preset binary-cpu --n 10 --samples 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, emit, machine, model_input, setup  # noqa: E402

from biva.objectives.training import training_loss  # noqa: E402


def module_groups(model) -> dict[str, torch.nn.Module]:
    """Named groups of the hierarchy whose forward time is reported (stages, heads, ...)."""
    groups = {}
    for path in ("bu_layers", "td_layers"):
        for i, layer in enumerate(getattr(model, path)):
            for part, m in layer.named_children():
                groups[f"{path}.{i}.{part}"] = m
    groups["out_conv"] = model.out_conv
    groups["likelihood"] = model.likelihood
    return groups


def label_modules(model) -> list:
    """Forward hooks that open a profiler range per module group; returns the handles."""
    handles = []
    for name, m in module_groups(model).items():
        def pre(_m, _inp, name=name):
            _m._prof_range = record_function(f"module::{name}")
            _m._prof_range.__enter__()

        def post(_m, _inp, _out):
            _m._prof_range.__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=["train", "eval"], default="train")
    p.add_argument("--preset", default="binary")
    p.add_argument("--batch", type=int, default=48, help="training batch")
    p.add_argument("--n", type=int, default=10, help="eval: images")
    p.add_argument("--samples", type=int, default=100, help="eval: importance samples K")
    p.add_argument("--variant", choices=["plain", "cl", "bf16", "fast"], default="fast",
                   help="plain: fp32 NCHW; cl: fp32 channels-last; bf16: bf16 autocast NCHW; "
                   "fast: bf16 autocast + channels-last")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--table", action="store_true", help="also print the tables (stderr)")
    p.add_argument("--data-root", default=None)
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)

    from biva import HierarchicalVAE, importance_weighted_bound, preset
    from biva.nn.blocks import use_channels_last

    cfg = preset(args.preset)
    x, _ = model_input(cfg, args.batch if args.what == "train" else args.n, args.data_root)
    x = x.to(device)
    torch.manual_seed(0)
    model = HierarchicalVAE(cfg).to(device)
    model.initialize(x)
    use_channels_last(model, args.variant in ("cl", "fast"))
    amp = torch.autocast(device.type, dtype=torch.bfloat16,
                         enabled=args.variant in ("bf16", "fast"))
    opt = torch.optim.Adamax(model.parameters(), lr=1e-4)

    def train_step():
        model.train()
        with amp:
            out = model(x)
            out.loss = training_loss(out, free_bits=2.0)
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            out.loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
            opt.step()

    def evaluate():
        with amp:
            importance_weighted_bound(model, x, args.samples)

    fn = train_step if args.what == "train" else evaluate
    fn()  # warm-up
    handles = label_modules(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        fn()
    for h in handles:
        h.remove()
    events = prof.key_averages()
    use_cuda = device.type == "cuda"

    def self_us(e):
        return e.self_device_time_total if use_cuda else e.self_cpu_time_total

    def total_us(e):
        return e.device_time_total if use_cuda else e.cpu_time_total

    ops = [e for e in events if not e.key.startswith(("module::", "backward", "optimizer",
                                                      "ProfilerStep"))]
    total = sum(self_us(e) for e in ops) or 1
    top_ops = sorted(ops, key=self_us, reverse=True)[:args.top]
    modules = sorted((e for e in events if e.key.startswith("module::")), key=total_us,
                     reverse=True)
    ranges = {e.key: round(total_us(e) / 1e3, 1) for e in events
              if e.key in ("backward", "optimizer")}
    if args.table:
        print(events.table(sort_by="self_cuda_time_total" if use_cuda else "self_cpu_time_total",
                           row_limit=args.top), file=sys.stderr)
    emit({"bench": "profile", "what": args.what, "preset": args.preset,
          "variant": args.variant, "machine": machine(device),
          "total_ms": round(total / 1e3, 1), **{f"{k}_ms": v for k, v in ranges.items()},
          "top_ops": [[e.key, round(self_us(e) / 1e3, 1), round(100 * self_us(e) / total, 1),
                       e.count] for e in top_ops],
          "forward_by_module": [[e.key[len("module::"):], round(total_us(e) / 1e3, 1)]
                                for e in modules[:args.top]]})


if __name__ == "__main__":
    main()
