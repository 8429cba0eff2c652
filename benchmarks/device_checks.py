"""Correctness checks of the accelerator path, one JSON line each (``{"check", "ok", ...}``).

Runs on any device, so the CPU dry run exercises the same code as a GPU session:

* ``channels_last``: the channels-last model gives the fp32 NCHW model's loss and log-weights;
* ``bf16``: bf16 autocast keeps the bound float32 and the ELBO within 1% of fp32;
* ``lk_fused``: L_K from one batched pass equals K sequential single-sample passes' log-mean-exp
  in distribution (same mean within 4 standard errors);
* ``ddp``: one training step under a one-process DistributedDataParallel group (NCCL on CUDA,
  gloo on CPU) gives the plain step's parameters;
* ``save_load``: a checkpoint written from the device loads on the CPU with the same outputs.

    python benchmarks/device_checks.py --device cuda [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup  # noqa: E402


def _model(device: torch.device, conv: bool, quick: bool):
    from biva import HierarchicalVAE, ModelConfig, preset

    torch.manual_seed(0)
    if conv:
        cfg = ModelConfig(input_shape=(3, 16, 16), likelihood="discretized_logistic",
                          latents=(6, 4, 2), latent_type="conv", filters=(16,),
                          kernels=(5, 3, 3), strides=(2, 1, 2), blocks=1, n_mix=3,
                          dropout_q=0.0, dropout_p=0.0)
        x = torch.randint(0, 256, (16, 3, 16, 16)).float() / 127.5 - 1
    else:
        cfg = preset("binary", filters=(16,) if quick else (32,), blocks=1 if quick else 2,
                     dropout_q=0.0, dropout_p=0.0)
        x = torch.bernoulli(torch.rand(16, 1, 28, 28))
    model = HierarchicalVAE(cfg)
    model.initialize(x)
    return model.to(device), x.to(device)


def check_channels_last(device, quick) -> dict:
    from biva.nn.blocks import use_channels_last

    res = {}
    for conv in (False, True):
        plain, x = _model(device, conv, quick)
        fast = use_channels_last(copy.deepcopy(plain))
        # Same latent noise in both: z = mu (the posterior means), so only the layout differs.
        with torch.no_grad(), _posterior_means():
            a, b = plain(x), fast(x)
        err = float((a.log_weight - b.log_weight).abs().max())
        res["conv" if conv else "dense"] = err
    return {"ok": all(v < 1e-2 for v in res.values()), "max_abs_log_weight_diff": res}


def check_bf16(device, quick) -> dict:
    res, ok = {}, True
    for conv in (False, True):
        model, x = _model(device, conv, quick)
        with torch.no_grad():
            torch.manual_seed(1)
            a = model(x)
            torch.manual_seed(1)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                b = model(x)
        rel = abs(float(b.elbo.mean() - a.elbo.mean())) / abs(float(a.elbo.mean()))
        ok &= b.log_weight.dtype == torch.float32 and rel < 0.01
        res["conv" if conv else "dense"] = {"elbo_fp32": float(a.elbo.mean()),
                                            "elbo_bf16": float(b.elbo.mean()),
                                            "relative_diff": rel}
    return {"ok": bool(ok), **res}


def check_lk_fused(device, quick) -> dict:
    from biva import importance_weighted_bound

    model, x = _model(device, False, quick)
    x = x[:2] if quick else x[:4]
    k, reps = (16, 4) if quick else (256, 8)
    torch.manual_seed(2)
    fused = torch.stack([importance_weighted_bound(model, x, k) for _ in range(reps)])
    seq = []
    for _ in range(reps):
        with torch.no_grad():
            lw = torch.stack([model.eval()(x).log_weight.double() for _ in range(k)])
        seq.append(torch.logsumexp(lw, 0) - math.log(k))
    seq = torch.stack(seq)
    diff = (fused.mean(0) - seq.mean(0)).abs()
    se = torch.sqrt(fused.var(0) / reps + seq.var(0) / reps) + 1e-3
    return {"ok": bool((diff < 4 * se + 0.05).all()), "k": k,
            "fused_mean": fused.mean(0).tolist(), "sequential_mean": seq.mean(0).tolist()}


def check_ddp(device, quick) -> dict:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        model, x = _model(device, False, quick)
        twin = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        results = []
        for m in (ddp, twin):
            opt = torch.optim.Adamax(m.parameters(), lr=1e-3)
            torch.manual_seed(3)
            loss = m(x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            results.append(float(loss.detach()))
        err = max(float((a - b).abs().max()) for a, b in
                  zip(model.parameters(), twin.parameters(), strict=True))
        return {"ok": err < 1e-5 and math.isfinite(results[0]), "backend": backend,
                "loss": results[0], "max_param_diff": err}
    finally:
        dist.destroy_process_group()


def check_save_load(device, quick) -> dict:
    from biva.utils.checkpoint import load_checkpoint, save_checkpoint

    model, x = _model(device, False, quick)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ckpt", tensors={"model": model.state_dict()},
                        state={"step": 1})
        tensors, _ = load_checkpoint(Path(tmp) / "ckpt", map_location="cpu")
    cpu_model = copy.deepcopy(model).cpu()
    cpu_model.load_state_dict(tensors["model"])
    with torch.no_grad(), _posterior_means():
        a = model.eval()(x).log_weight.cpu()
        b = cpu_model.eval()(x.cpu()).log_weight
    err = float((a - b).abs().max())
    return {"ok": err < 1e-2, "max_abs_log_weight_diff": err,
            "devices": [str(device), "cpu"]}


class _posterior_means:
    """Latent draws replaced by the means: deterministic passes to compare layouts/devices."""

    def __enter__(self):
        from biva.nn.gaussian import DiagonalGaussian

        self._orig = DiagonalGaussian.sample
        DiagonalGaussian.sample = lambda self, temperature=1.0, noise=None: self.mu

    def __exit__(self, *exc):
        from biva.nn.gaussian import DiagonalGaussian

        DiagonalGaussian.sample = self._orig


CHECKS: dict[str, Callable] = {"channels_last": check_channels_last, "bf16": check_bf16,
                               "lk_fused": check_lk_fused, "ddp": check_ddp,
                               "save_load": check_save_load}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="", help="comma-separated subset of the checks")
    args = p.parse_args(argv)
    device = setup(args)
    names = [n for n in CHECKS if not args.only or n in args.only.split(",")]
    failed = 0
    for name in names:
        t = time.perf_counter()
        try:
            rec = CHECKS[name](device, args.quick)
        except Exception as err:  # noqa: BLE001 - a failed check is reported, not fatal
            rec = {"ok": False, "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=3)}
        rec = {"check": name, "device": str(device), **rec,
               "seconds": round(time.perf_counter() - t, 2)}
        failed += not rec["ok"]
        print(json.dumps(rec, separators=(",", ":")), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
