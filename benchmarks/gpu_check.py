"""The accelerator check: correctness, speed and a timed training, in at most 9 minutes.

Writes to OUT_DIR: ``results.jsonl`` (one record per part: its command, exit code, seconds
and the JSON it printed), ``env.json``, ``summary.md`` and the timed run's directory. Each
part has its own time cap, and parts that no longer fit before the global deadline are
skipped (recorded as such), so one slow part cannot eat the rest. ``--device cpu --quick``
is the dry run the test suite executes (under a minute).

    bash benchmarks/gpu_check.sh OUT_DIR                     # on a CUDA machine
    bash benchmarks/gpu_check.sh OUT_DIR --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity), for
# the share of the device's nominal peak; the measured 3x3-conv peak is reported beside it.
NOMINAL_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1,
                       "A10": 125.0, "L4": 121.0, "RTX 4090": 165.2, "RTX 3090": 71.0}


def nominal_bf16_tflops(name: str | None) -> float | None:
    """The data-sheet dense bf16 peak of a device name such as 'NVIDIA H200', if known."""
    for key, value in NOMINAL_BF16_TFLOPS.items():
        if name and key in name:
            return value
    return None


def environment(device: str) -> dict:
    """torch / CUDA versions, the device's name, compute capability and memory, bf16 choice."""
    import torch

    from biva.training.precision import resolve_amp

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "device": device,
           "cuda_available": torch.cuda.is_available(),
           "amp_auto": resolve_amp("auto", torch.device(device))[0],
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update({"device_name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count,
                    "bf16_supported": torch.cuda.is_bf16_supported(),
                    "nominal_bf16_tflops": nominal_bf16_tflops(props.name)})
    return env


def parts(out: Path, device: str, quick: bool, data_root: str | None) -> list[dict]:
    """The parts in order: name, command, cap (s). Quick: tiny sizes for the CPU dry run."""
    py = sys.executable
    dev = ["--device", device]
    # The CPU dry run on one thread: two OpenMP threads on cores other jobs keep busy ran the
    # tiny checks about 100x slower (45 s for 16 passes that take 0.4 s on one thread).
    q = ["--quick", "--threads", "1"] if quick else []
    root = ["--data-root", data_root] if data_root else []
    biva = [py, "-m", "biva.cli.main"]
    run = out / "static_mnist_5min"
    if quick:
        train = biva + ["train", "--config", "digits", "--run-dir", str(run), *dev,
                        "--threads", "1", "--no-progress", "--steps", "6",
                        "--set", "train.finetune_steps=0",
                        "--set", "model.filters=[8]",
                        "--set", "model.blocks=1", "--set", "train.eval_every=6",
                        "--set", "train.checkpoint_every=6", "--set", "train.log_every=3"]
        ev1 = biva + ["evaluate", str(run), "--samples", "1", "--split", "test", *dev,
                      "--threads", "1", "--n-examples", "50",
                      "--out", str(out / "eval_test_k1.json")]
        evk = biva + ["evaluate", str(run), "--samples", "20", "--split", "test", *dev,
                      "--threads", "1", "--n-examples", "10",
                      "--out", str(out / "eval_test_k1000_500.json")]
    else:
        train = biva + ["train", "--config", "static_mnist", "--run-dir", str(run), *dev,
                        *root, "--no-progress", "--amp", "bf16", "--set",
                        "train.max_minutes=5", "--set", "train.eval_every=1000000",
                        "--set", "train.checkpoint_every=1000000", "--set", "train.log_every=200"]
        ev1 = biva + ["evaluate", str(run), "--samples", "1", "--split", "test", *dev, *root,
                      "--amp", "bf16", "--out", str(out / "eval_test_k1.json")]
        evk = biva + ["evaluate", str(run), "--samples", "1000", "--split", "test", "--n-examples",
                      "500", *dev, *root, "--amp", "bf16",
                      "--out", str(out / "eval_test_k1000_500.json")]
    bench = [py, str(BENCH / "bench_train.py"), *dev, *q, *root]
    natural_batches = [2] if quick else [64, 32, 16, 8]
    # The dry run checks the plumbing, not the speed: tiny models stand in for the presets.
    binary = "digits" if quick else "binary"
    natural = ["--preset", "natural32", "--batch"] if not quick else [
        "--preset", "natural32-cpu", "--batch"]
    return [
        {"name": "device_checks", "cmd": [py, str(BENCH / "device_checks.py"), *dev, *q],
         "cap": 90, "jsonl": True},
        {"name": "train_binary_b48", "cmd": bench + ["--preset", binary, "--batch", "48"]
         + (["--no-baseline"] if quick else []), "cap": 45},
        {"name": "eval_l1000", "cmd": [py, str(BENCH / "bench_eval.py"), "--preset", binary,
                                       "--samples", "1000", *dev, *q, *root], "cap": 60},
        {"name": "sample", "cmd": [py, str(BENCH / "bench_sample.py"), "--preset", binary,
                                   *dev, *q], "cap": 30},
        {"name": "timed_training", "cmd": train, "cap": 30 if quick else 345},
        {"name": "eval_timed_l1", "cmd": ev1, "cap": 60, "json_file": "eval_test_k1.json"},
        {"name": "eval_timed_l1000", "cmd": evk, "cap": 60,
         "json_file": "eval_test_k1000_500.json"},
        {"name": "train_binary_large", "cmd": bench + ["--preset", binary, "--batch",
                                                       "8" if quick else "512",
                                                       "--no-baseline"], "cap": 45,
         "skip_quick": True},
        {"name": "train_natural32", "cmds": [bench + natural + [str(b), "--no-baseline"]
                                             for b in natural_batches], "cap": 60,
         "skip_quick": True},
        {"name": "train_binary_compile", "cmd": bench + ["--preset", "binary", "--batch", "48",
                                                         "--compile", "--no-baseline"],
         "cap": 90, "skip_quick": True},
    ]


def _json(line: str) -> dict | None:
    """A one-line JSON object printed by a benchmark, else None."""
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def run_part(part: dict, out: Path, cap: float) -> dict:
    """Run one part (or its first command that succeeds) under ``cap`` seconds."""
    rec: dict = {"part": part["name"], "cap_s": cap}
    t0 = time.perf_counter()
    for cmd in part.get("cmds", [part.get("cmd")]):
        left = cap - (time.perf_counter() - t0)
        rec["cmd"] = " ".join(cmd)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left, 1),
                                  cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired as err:
            rec.update({"rc": "timeout", "stderr_tail": (err.stderr or b"")[-800:].decode(
                "utf-8", "replace") if isinstance(err.stderr, bytes) else str(err.stderr)[-800:]})
            break
        rec.update({"rc": proc.returncode, "stderr_tail": proc.stderr[-800:]})
        lines = [_json(ln) for ln in proc.stdout.splitlines()]
        lines = [ln for ln in lines if ln is not None]
        if part.get("jsonl"):
            rec["records"] = lines
        elif lines:
            rec["record"] = lines[-1]
        if part.get("json_file") and (out / part["json_file"]).is_file():
            rec["record"] = json.loads((out / part["json_file"]).read_text())
        if proc.returncode == 0:
            break
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def summary(records: list[dict], env: dict) -> str:
    """A short Markdown summary of the figures that matter."""
    by = {r["part"]: r for r in records}

    def rec(name):
        return (by.get(name) or {}).get("record") or {}

    lines = [f"# Accelerator check, {env['date']}", "",
             f"- device: {env.get('device_name', env['device'])}, compute capability "
             f"{env.get('compute_capability', '-')}, {env.get('memory_gib', '-')} GiB; torch "
             f"{env['torch']}, CUDA {env['cuda']}; amp auto -> {env['amp_auto']}", ""]
    checks = (by.get("device_checks") or {}).get("records") or []
    if checks:
        lines.append("- correctness: " + ", ".join(
            f"{c['check']} {'ok' if c['ok'] else 'FAILED'}" for c in checks))
    for name in ("train_binary_b48", "train_binary_large", "train_natural32",
                 "train_binary_compile"):
        r = rec(name)
        if r:
            nominal = env.get("nominal_bf16_tflops")
            share = (f", {r['achieved_gflops'] / 1e3 / nominal:.3f} of the nominal "
                     f"{nominal} TFLOP/s" if nominal and r.get("achieved_gflops") else "")
            lines.append(f"- {name}: {r.get('images_per_s')} img/s at batch {r.get('batch')}, "
                         f"{r.get('achieved_gflops')} GFLOP/s, {r.get('share_of_bf16_conv_peak')}"
                         f" of the measured bf16 conv peak{share}")
    r = rec("eval_l1000")
    if r:
        lines.append(f"- L_1000: {r.get('images_per_s')} test images/s fused, "
                     f"{r.get('speedup_vs_sequential')}x the K sequential passes")
    r = rec("sample")
    if r:
        lines.append(f"- sampling: {r.get('images_per_s')} img/s")
    r1, rk = rec("eval_timed_l1"), rec("eval_timed_l1000")
    if r1:
        k = rk.get("k", 1000)
        lines.append(f"- timed training ({env['timed_training']}): test L_1 {r1.get('L_1')} "
                     f"nats on {r1.get('n_examples')} images; L_{k} {rk.get(f'L_{k}')} nats on "
                     f"{rk.get('n_examples')} images")
    lines += ["", "| part | rc | seconds |", "|---|---|---|"]
    lines += [f"| {r['part']} | {r.get('rc')} | {r.get('seconds')} |" for r in records]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the CPU dry run")
    p.add_argument("--budget", type=float, default=540.0, help="global deadline (s)")
    p.add_argument("--data-root", default=os.environ.get("BIVA_DATA_DIR"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = environment(args.device)
    env["timed_training"] = ("digits, tiny model, 6 steps (dry run)" if args.quick
                             else "static MNIST, `binary` preset, bf16, 5 minutes")
    (args.out / "env.json").write_text(json.dumps(env, indent=1))
    records = []
    results = args.out / "results.jsonl"
    results.write_text("")
    for part in parts(args.out, args.device, args.quick, args.data_root):
        if args.quick:
            # The CPU dry run checks the plumbing, not the speed: the caps are sized for a GPU
            # and a busy CPU (CI beside other jobs) can need a few times as long.
            part = {**part, "cap": 3 * part["cap"]}
        left = args.budget - (time.perf_counter() - start)
        if args.quick and part.get("skip_quick"):
            rec = {"part": part["name"], "rc": "skipped", "reason": "not in --quick"}
        elif left < min(part["cap"], 20):
            rec = {"part": part["name"], "rc": "skipped", "reason": f"{left:.0f} s left"}
        else:
            rec = run_part(part, args.out, min(part["cap"], left))
        records.append(rec)
        with results.open("a") as f:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        print(f"{rec['part']}: rc={rec.get('rc')} ({rec.get('seconds', 0)} s)", flush=True)
    (args.out / "summary.md").write_text(summary(records, env))
    print((args.out / "summary.md").read_text())
    failed = [r["part"] for r in records if r.get("rc") not in (0, "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
