"""Shared pieces of the benchmarks: machine description, timing, memory, FLOPs, conv peak.

Timings interleave the variants being compared (A, B, A, B, ...) and report medians, so that a
machine shared with other jobs slows every variant alike; each JSON line carries the load
average at the start and the end of the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--device, --threads, --quick, --reps."""
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="fast smoke version (small sizes)")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (0: default)")


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads, pick the device."""
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def busy_jobs() -> int:
    """How many `biva train` processes other than this one run now (a noise indicator)."""
    count = 0
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"biva train" in text and cmd.parent.name != str(os.getpid()):
            count += 1
    return count


def machine(device: torch.device) -> dict:
    """What ran the benchmark: CPU model, cores, torch, device, threads, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0],
            "device": str(device), "load_avg": load_average(), "other_biva_train": busy_jobs(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], reps: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each fn over ``reps`` rounds, run A, B, A, B, ... after a warm-up."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


class PeakMemory:
    """Peak tensor memory of a block above what was allocated at its start (MiB).

    CUDA: ``max_memory_allocated``. CPU: the running sum of the allocations and frees that
    torch.profiler records (``profile_memory``), so the figure is the tensors' peak (activations,
    gradients, temporaries), not the process RSS, which the heap keeps high between steps.
    """

    def __init__(self, device: torch.device):
        self.device, self.mib = device, float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.prof.__exit__(*exc)
            events = sorted((e.start_ns(), e.nbytes())
                            for e in self.prof.profiler.kineto_results.events()
                            if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
            peak = running = 0
            for _, nbytes in events:
                running += nbytes
                peak = max(peak, running)
        self.mib = round(peak / 2**20, 1)


def process_peak_rss_mib() -> float:
    """The process's peak resident memory so far (MiB; Linux VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of ``fn()`` by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def conv_peak(batch: int, channels: int, size: int, device: torch.device, reps: int = 5,
              kernel: int = 3, group_gflop: float = 20.0) -> dict[str, float]:
    """GFLOP/s of one 3x3 conv (batch, channels, size, size), forward, by dtype and layout.

    The best one can hope from the model's convolutions on this machine: fp32 NCHW and
    channels-last, bf16 channels-last (median of ``reps`` timed groups of calls, each about
    ``group_gflop`` GFLOP; a dry run takes a small one).
    """
    flop = 2 * batch * size * size * channels * channels * kernel * kernel
    variants = {}
    for name, dtype, fmt in (("fp32_nchw", torch.float32, torch.contiguous_format),
                             ("fp32_cl", torch.float32, torch.channels_last),
                             ("bf16_cl", torch.bfloat16, torch.channels_last)):
        x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
        w = torch.randn(channels, channels, kernel, kernel, device=device, dtype=dtype) * 0.05
        x, w = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        # Enough calls per timed group (~20 GFLOP) that one group lasts tens of milliseconds
        # on a GPU (seconds on a CPU).
        calls = max(4, round(group_gflop * 1e9 / flop)) * (10 if device.type == "cuda" else 1)

        def run(x=x, w=w, calls=calls):
            for _ in range(calls):
                F.conv2d(x, w, padding=kernel // 2)

        variants[name] = (run, calls)
    times = interleaved({k: v[0] for k, v in variants.items()}, reps, device)
    return {k: round(flop * variants[k][1] / median(t) / 1e9, 1) for k, t in times.items()}


def binary_images(n: int, data_root: str | None, split: str = "test") -> tuple[torch.Tensor, str]:
    """n statically binarized MNIST images (N, 1, 28, 28) in {0, 1}, and where they came from.

    Falls back to random binary images when the dataset files are not found.
    """
    from biva.data import load_dataset, to_model_input

    root = data_root or os.environ.get("BIVA_DATA_DIR") or str(REPO.parent / "shared" / "data")
    try:
        data = load_dataset("binarized_mnist", root=root)
    except Exception as err:  # noqa: BLE001 - any failure: fall back, say so in the output
        torch.manual_seed(0)
        return torch.bernoulli(torch.rand(n, 1, 28, 28)), f"random (no data: {type(err).__name__})"
    images = getattr(data, split).images[:n]
    return to_model_input(images, data.kind, 8), f"binarized_mnist/{split}"


def model_input(cfg, n: int, data_root: str | None, split: str = "train"
                ) -> tuple[torch.Tensor, str]:
    """n inputs for a model config: static MNIST (``split``) for 1x28x28 binary models, else
    random."""
    if cfg.likelihood == "bernoulli" and tuple(cfg.input_shape) == (1, 28, 28):
        return binary_images(n, data_root, split)
    torch.manual_seed(0)
    c, h, w = cfg.input_shape
    if cfg.likelihood == "bernoulli":
        return torch.bernoulli(torch.rand(n, c, h, w)), "random binary"
    levels = 2**cfg.bits - 1
    return torch.randint(0, levels + 1, (n, c, h, w)).float() / levels * 2 - 1, "random 8-bit"


def emit(record: dict) -> None:
    """Print the benchmark's one JSON line."""
    print(json.dumps(record, separators=(",", ":")), flush=True)
