"""Start, resume and finish runs: the trainer a request calls for, in its run directory, and
after training the test bounds, samples, reconstructions and curves of ``biva run``."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from biva.config import load_run_config, read_run_config
from biva.data import evaluation_split, load_run_data
from biva.evaluation.classification import write_class_samples
from biva.evaluation.generation import write_reconstructions, write_samples
from biva.evaluation.plots import plot_training_curves
from biva.runs.evaluate import EvalSettings, bounds_named, evaluate_run, write_evaluation
from biva.runs.loading import load_trained
from biva.training import Trainer
from biva.training.distributed import destroy_distributed, init_distributed
from biva.training.own_data import CPU_CONFIGS, config_for_data
from biva.training.semi_supervised import resume_trainer, trainer_class
from biva.utils.config_io import load_config_file


@dataclass
class TrainRequest:
    """A run to start (``config`` name or file, or ``data`` a folder/.npz of one's own images
    with ``image_size``; ``overrides`` ``KEY=VALUE``; ``run_dir``, default
    runs/<config>-<time>) or to resume (``resume``: its run directory; ``overrides`` then
    only extend the budget). ``stop_after``: stop at this step as if interrupted."""

    config: str | None = None
    data: Path | None = None
    image_size: int | None = None
    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    resume: Path | None = None
    stop_after: int | None = None


def default_run_dir(config: str) -> Path:
    """runs/<config name>-<YYYYmmdd-HHMMSS>."""
    return Path("runs") / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_trainer(request: TrainRequest) -> tuple[Trainer, Path]:
    """A new or resumed trainer for ``request`` (the semi-supervised one when the config has
    data.labels_per_class > 0), and its run directory."""
    if request.resume is not None:
        return (resume_trainer(request.resume, budget=list(request.overrides),
                               stop_after=request.stop_after), request.resume)
    data = None
    if request.data is not None:
        print(f"reading the images of {request.data} ...", flush=True)
        cfg, data, lines = config_for_data(request.data, request.config,
                                           list(request.overrides), request.image_size)
        print("\n".join(lines))
    elif request.image_size is not None:
        raise ValueError("--image-size applies to --data PATH (or set data.image_size)")
    else:
        cfg = load_run_config(request.config or "digits", list(request.overrides))
        cfg.name = Path(request.config or "digits").stem
    run_dir = request.run_dir or default_run_dir(cfg.name)
    return trainer_class(cfg)(cfg, run_dir, data=data, stop_after=request.stop_after), run_dir


def configured_device(request: TrainRequest) -> str:
    """train.device of the run being started or resumed ("auto" when unreadable)."""
    if request.resume is not None:
        try:
            return str(load_config_file(request.resume / "config.json")["train"]["device"])
        except (OSError, KeyError, TypeError, ValueError):
            return "auto"  # Trainer.resume reports a missing or bad config itself
    default = CPU_CONFIGS[32] if request.data is not None else "digits"
    return load_run_config(request.config or default, list(request.overrides)).train.device


def train_run(request: TrainRequest) -> tuple[Trainer, Path]:
    """Train (or resume) the run of ``request`` to the end of its budget; returns the trainer
    and the run directory. Under torchrun (WORLD_SIZE > 1) every rank joins the process group
    first (NCCL on CUDA, gloo on CPU) and the trainer wraps the model in DDP."""
    distributed = init_distributed(configured_device(request))
    try:
        trainer, run_dir = make_trainer(request)
        trainer.fit()
        return trainer, run_dir
    finally:
        if distributed:
            destroy_distributed()


def training_summary(trainer: Trainer, run_dir: Path) -> str:
    """Where the run is and how it ended: step, the best validation figure, skipped updates,
    throughput."""
    text = (f"training stopped at step {trainer.step}: {trainer.stop_reason or 'done'}\n"
            f"run directory: {run_dir}  ({trainer.best_summary()}, {trainer.guard.skipped} "
            f"skipped updates)")
    if trainer.session_seconds > 0:
        # The session's mean (validations included), not the last log window's.
        text += (f"\nthroughput: {trainer.session_images / trainer.session_seconds:.1f} "
                 f"images/s over {trainer.session_seconds / 60:.1f} min of training")
    return text


def finish_run(run_dir: Path, settings: EvalSettings, *, device="cpu", progress: bool = False
               ) -> tuple[dict, list[Path]]:
    """After training: the test bounds of the best checkpoint (``settings``), samples at
    temperatures, reconstructions, training curves and, for a semi-supervised run, its
    confusion matrix and class-conditional samples. Returns (the evaluation, files written).
    Each phase is announced on stderr: the evaluation can take minutes of its own."""
    s = settings.resolved(read_run_config(Path(run_dir) / "config.json"))
    print(f"evaluating {bounds_named(s.n_samples)} on the test split ({s.n_examples or 'all'} "
          f"images, K = {s.n_samples} importance samples; --samples sets K)", file=sys.stderr,
          flush=True)
    res = evaluate_run(run_dir, settings, device=device, progress=progress)
    print(f"evaluated in {res['seconds']:.0f} s; writing samples, reconstructions and "
          "curves", file=sys.stderr, flush=True)
    written = write_evaluation(run_dir, res, run_dir / f"eval_test_k{res['k']}.json", settings)
    model, cfg, _ = load_trained(run_dir, "best", device)
    data = load_run_data(cfg)
    figures = run_dir / "figures"
    written += [
        write_samples(model, data.kind, figures / "samples.png", 64, [1.0], seed=0),
        write_samples(model, data.kind, figures / "samples_temperatures.png", 12,
                      [1.0, 0.85, 0.7, 0.5], seed=0),
        write_reconstructions(model, evaluation_split(data, "test", cfg.train.seed), data.kind,
                              cfg.model.bits, figures / "reconstructions.png"),
        plot_training_curves(run_dir),
    ]
    if "classification" in res:
        written.append(write_class_samples(model, data.kind, figures / "samples_by_class.png"))
    return res, written
