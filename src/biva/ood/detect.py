"""Flag anomalous images in a folder with a run's detector (``biva detect``)."""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biva.data.folders import iter_folder
from biva.ood.detector import OODDetector, detector_for_model
from biva.runs.loading import load_trained
from biva.utils.atomic import atomic_open
from biva.utils.run_lock import output_lock


@dataclass(frozen=True)
class Detection:
    """What :func:`detect_folder` did: the CSV written, how many images it scored and flagged,
    and the share of in-distribution images the detector flags by design."""

    out: Path
    n_images: int
    n_flagged: int
    in_flag_rate: float


def csv_text(text: str) -> str:
    """``text`` safe in a spreadsheet: a leading ``'`` before a name that starts like a
    formula (=, +, -, @, tab, carriage return), which a spreadsheet would otherwise run."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def detector_path(run_dir: Path) -> Path:
    """Where a run's detector is: a shipped model's own (``RUN_DIR/detector.json`` of a
    ``--pretrained`` copy, never replaced by a refit), else ``RUN_DIR/ood/detector.json``."""
    shipped = run_dir / "detector.json"
    if (run_dir / "pretrained.json").is_file() and shipped.is_file():
        return shipped
    return run_dir / "ood" / "detector.json"


def run_detector(run_dir: Path, model, cfg, *, n_valid: int = 1000) -> OODDetector:
    """The run's detector (:func:`detector_path`); fitted on the run's validation images
    alone and saved in RUN_DIR/ood/ first when the run has none."""
    path = detector_path(run_dir)
    if path.is_file():
        det = OODDetector.load(path, model)
        print(f"detector: {path} ({det.score_}, k = {det.k_})", file=sys.stderr)
        return det
    det = detector_for_model(model, cfg, n_valid=n_valid, name=str(run_dir))
    det.save(path)
    print(f"detector fitted and saved: {path}", file=sys.stderr)
    return det


def default_csv(run_dir: Path, images: Path) -> Path:
    """RUN_DIR/ood/detect_<folder name>_<8 hex digits of its full path>.csv: two folders of
    one name (a/imgs, b/imgs) never share a file."""
    where = hashlib.sha256(str(images.resolve()).encode()).hexdigest()[:8]
    return run_dir / "ood" / f"detect_{images.resolve().name}_{where}.csv"


def detect_folder(run_dir: str | Path, images: str | Path, *, out: Path | None = None,
                  checkpoint: str = "best", n_valid: int = 1000, seed: int = 0,
                  device: str | torch.device = "cpu", batch_size: int = 512) -> Detection:
    """Score every image below ``images`` (or that one file) with the run's detector and write
    a CSV of file, anomaly score (higher = more anomalous) and flag (+1 in-distribution, -1
    flagged); default ``out``: :func:`default_csv`. A second process writing the same CSV is
    refused at once."""
    run_dir, images = Path(run_dir), Path(images)
    model, cfg, _ = load_trained(run_dir, checkpoint, device)
    det = run_detector(run_dir, model, cfg, n_valid=n_valid)
    out = out or default_csv(run_dir, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_images = n_flagged = 0
    # A batch of images at a time, rows written as they go: memory flat in the folder's size
    # (100,000 images once took 4.3 GB); the CSV appears whole, at the end, or not at all.
    with output_lock(out), atomic_open(out, "w") as f:
        # Every name quoted (a \r or a comma in a file name stays in its row); numbers bare.
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["file", "anomaly", "flag"])
        for files, batch in iter_folder(images, cfg, seed=seed, batch=batch_size):
            anomaly = det.anomaly_score(batch)
            flags = np.where(anomaly > det.threshold_, -1, 1)
            for file, a, flag in zip(files, anomaly, flags, strict=True):
                w.writerow([csv_text(str(file)), float(a), int(flag)])
            n_images, n_flagged = n_images + len(files), n_flagged + int((flags == -1).sum())
    return Detection(out, n_images, n_flagged, 1 - det.in_tpr)
