"""Turn a finished run into a shipped pretrained model with its card (maintainers' tool).

Writes src/biva/pretrained/NAME/ (config.json, model.safetensors, card.json, README.md and,
with --detector, a detector.json). Each card score is measured on a fixed, seeded slice of the
real test split at sampling seeds 0, 1, 2: the card states the seed-0 value (what
tests/test_pretrained.py re-measures) and the standard deviation over the three seeds as its
Monte Carlo error. With --half the weights are stored as float16 only if every bound moves
by less than its Monte Carlo error; otherwise float32 is kept (and the card says which).
--detector fits the no-examples density detector (``OODDetector(score="dos")``) on the
first --n-valid validation images with the weights as shipped, after the precision is
chosen; ``auroc:NAME`` metrics are measured with it. --detector-samples K gives its bounds K
importance samples (K passes a scored image; default 1). The shipped config never keeps the
run's absolute data root; --data-path rewrites an absolute folder path in it to one relative
to the data root (e.g. photos32), so the card's test finds the data on any machine.

--refit-detector NAME refits a shipped model's detector (with the current default rule) and
re-measures the card's ``auroc:NAME`` scores; weights, config and bounds stay as they are.

--headline NAME measures the card's headline figures: each metric of its scores on the whole
test split (--headline-examples N with a larger split: N images drawn with seed 0, of the
anomaly set too), with a 95% interval over the images and the Monte Carlo draws
(``biva.pretrained.measure_interval``); weights, config and scores stay as they are.

Usage:
  python benchmarks/make_pretrained.py RUN_DIR NAME --description TEXT --command "biva ..."
      --commit SHA --date YYYY-MM-DD [--metric L_1 --metric L_100 --metric auroc:mnist]
      [--n-examples 200] [--half] [--detector --n-valid 1000 --detector-samples 10]
      [--data-path photos32]
  (a semi-supervised run: --metric error --metric L_1, the test error of q(y|x))
  python benchmarks/make_pretrained.py --refit-detector NAME [--n-valid 1000]
      [--detector-samples 10]
  python benchmarks/make_pretrained.py --headline NAME [--headline-examples 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from biva.pretrained import (  # noqa: E402
    card_markdown,
    load,
    measure,
    measure_interval,
    save_pretrained,
    sha256_file,
)
from biva.utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from biva.utils.jsonl import read_jsonl  # noqa: E402

UNITS = {"L": "nats", "bpd": "bits/dim", "auroc": "AUROC (OOD positive)",
         "error": "fraction of test images"}


def _unit(metric: str) -> str:
    return UNITS[metric.split(":")[0].split("_")[0]]


def _scores(folder: Path, metrics: list[str], n: int) -> list[dict]:
    p = load(folder)
    out = []
    for metric in metrics:
        values = [measure(p, metric, n_examples=n, seed=s) for s in (0, 1, 2)]
        out.append({"metric": metric, "unit": _unit(metric), "split": "test", "n_examples": n,
                    "seed": 0, "value": values[0],
                    "mc_error": statistics.stdev(values) if len(values) > 1 else 0.0})
        print(f"{metric}: {values}", flush=True)
    return out


def _fit_detector(folder: Path, n_valid: int, n_samples: int = 1) -> dict:
    """A density (dos) detector fitted on the shipped weights and the validation images of
    the config, written into ``folder``; its bounds are L_K with K = ``n_samples`` (cost a
    scored image: K passes). Returns its summary for the card."""
    from biva.ood.detector import detector_for_model

    p = load(folder)
    det = detector_for_model(p.model, p.config, n_valid=n_valid, name=p.name,
                             n_samples=n_samples)
    det.save(folder / "detector.json")
    return {"score": det.score_, "k": det.k_, "n_fit": det.n_fit_, "in_tpr": det.in_tpr,
            "n_samples": det.n_samples,
            "fitted_on": f"the first {det.n_fit_} validation images of "
                         f"{p.config.data.path or p.config.data.name}"}


def refit_detector(name: str, n_valid: int, n_samples: int | None = None) -> int:
    """Refit the shipped ``name``'s detector and re-measure its card's AUROCs (same slice,
    seeds 0, 1, 2); the card records the new detector, its checksum and scores. K
    (``n_samples``) stays the shipped detector's unless given."""
    out = ROOT / "src" / "biva" / "pretrained" / name
    card = json.loads((out / "card.json").read_text())
    old = {s["metric"]: s["value"] for s in card["scores"]}
    if n_samples is None:
        n_samples = card.get("detector", {}).get("n_samples", 1)
    card["detector"] = _fit_detector(out, n_valid, n_samples)
    card["sha256"]["detector.json"] = sha256_file(out / "detector.json")
    atomic_write_json(out / "card.json", card)     # load() checks the detector's checksum
    for i, score in enumerate(card["scores"]):
        if score["metric"].startswith("auroc:"):
            card["scores"][i] = _scores(out, [score["metric"]], score["n_examples"])[0]
    atomic_write_json(out / "card.json", card)
    atomic_write_text(out / "README.md", card_markdown(card))
    for s in card["scores"]:
        print(f"{s['metric']}: {old[s['metric']]} -> {s['value']} (MC error {s['mc_error']})")
    return 0


def headline(name: str, n_examples: int = 0) -> int:
    """Add the card's headline figures (see the module docstring) to the shipped ``name``."""
    out = ROOT / "src" / "biva" / "pretrained" / name
    card = json.loads((out / "card.json").read_text())
    p = load(out)
    card["headline"] = []
    for score in card["scores"]:
        h = measure_interval(p, score["metric"], n_examples=n_examples,
                             subset_seed=0 if n_examples else None)
        card["headline"].append({**h, "unit": score.get("unit", _unit(score["metric"]))})
        print(json.dumps(card["headline"][-1]))
    atomic_write_json(out / "card.json", card)
    atomic_write_text(out / "README.md", card_markdown(card))
    return 0


def _relative_data_path(folder: Path, data_path: str | None) -> None:
    """Drop this machine's data root from the shipped config (the data is then read from
    $BIVA_DATA_DIR or the default folder) and point it at ``data_path``, a folder relative to
    the data root, when given; update the card's checksum of config.json."""
    cfg = json.loads((folder / "config.json").read_text())
    if data_path is None and cfg["data"].get("root") is None:
        return
    cfg["data"]["root"] = None
    if data_path is not None:
        cfg["data"]["path"] = data_path
    atomic_write_json(folder / "config.json", cfg)
    card = json.loads((folder / "card.json").read_text())
    card["sha256"]["config.json"] = sha256_file(folder / "config.json")
    atomic_write_json(folder / "card.json", card)


def main() -> int:
    if "--headline" in sys.argv:
        ap = argparse.ArgumentParser(description="a shipped card's headline figures")
        ap.add_argument("--headline", required=True, metavar="NAME")
        ap.add_argument("--headline-examples", type=int, default=0, metavar="N",
                        help="N test images drawn with seed 0 (default: the whole split)")
        args = ap.parse_args()
        return headline(args.headline, args.headline_examples)
    if "--refit-detector" in sys.argv:
        ap = argparse.ArgumentParser(description="refit a shipped model's detector")
        ap.add_argument("--refit-detector", required=True, metavar="NAME")
        ap.add_argument("--n-valid", type=int, default=1000)
        ap.add_argument("--detector-samples", type=int, default=None, metavar="K",
                        help="K of the refitted detector (default: the shipped one's)")
        args = ap.parse_args()
        return refit_detector(args.refit_detector, args.n_valid, args.detector_samples)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--description", required=True)
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--metric", action="append", default=None)
    ap.add_argument("--n-examples", type=int, default=200)
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--detector", action="store_true")
    ap.add_argument("--n-valid", type=int, default=1000)
    ap.add_argument("--detector-samples", type=int, default=1, metavar="K",
                    help="importance samples of the detector's bounds (K passes an image)")
    ap.add_argument("--data-path", default=None)
    args = ap.parse_args()
    metrics = args.metric or ["L_1", "L_100"]
    bounds = [m for m in metrics if not m.startswith("auroc:")]
    aurocs = [m for m in metrics if m.startswith("auroc:")]
    if aurocs and not args.detector:
        ap.error("auroc:NAME metrics need --detector")
    out = ROOT / "src" / "biva" / "pretrained" / args.name
    cfg = json.loads((args.run_dir / "config.json").read_text())
    records = read_jsonl(args.run_dir / "metrics.jsonl")
    cpu = max((r["cpu_s"] for r in records if "cpu_s" in r), default=math.nan) / 60
    steps = max((r["step"] for r in records if "step" in r), default=0)
    card = {"name": args.name, "description": args.description,
            "data": {"name": cfg["data"]["name"],
                     "path": args.data_path or cfg["data"].get("path"),
                     "split_seed": cfg["data"].get("split_seed"),
                     "binarization": cfg["data"].get("binarization")},
            "training": {"command": args.command, "commit": args.commit, "date": args.date,
                         "cpu_minutes": round(cpu, 1), "steps": steps}}
    tmp = out.with_name(out.name + ".float32")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(args.run_dir, tmp, card={**card, "scores": []})
    _relative_data_path(tmp, args.data_path)
    scores = _scores(tmp, bounds, args.n_examples)
    chosen, half = tmp, False
    if args.half:
        tmp16 = out.with_name(out.name + ".float16")
        shutil.rmtree(tmp16, ignore_errors=True)
        save_pretrained(args.run_dir, tmp16, card={**card, "scores": []}, half=True)
        _relative_data_path(tmp16, args.data_path)
        s16 = _scores(tmp16, bounds, args.n_examples)
        moved = [abs(a["value"] - b["value"]) for a, b in zip(scores, s16, strict=True)]
        if all(m < max(a["mc_error"], 1e-9) for m, a in zip(moved, scores, strict=True)):
            chosen, half, scores = tmp16, True, s16
        print(f"float16 moves the scores by {moved} (Monte Carlo errors "
              f"{[a['mc_error'] for a in scores]}): keeping {'float16' if half else 'float32'}")
    shutil.rmtree(out, ignore_errors=True)
    chosen.rename(out)
    for extra in (tmp, out.with_name(out.name + ".float16")):
        shutil.rmtree(extra, ignore_errors=True)
    full = json.loads((out / "card.json").read_text())
    (out / "detector.json").unlink(missing_ok=True)    # a run's own: fitted on other weights
    full["sha256"].pop("detector.json", None)
    if args.detector:
        full["detector"] = _fit_detector(out, args.n_valid, args.detector_samples)
        full["sha256"]["detector.json"] = sha256_file(out / "detector.json")
    full["scores"] = scores
    atomic_write_json(out / "card.json", full)     # load() of the AUROCs checks the detector
    scores += _scores(out, aurocs, args.n_examples)
    full["scores"] = scores
    atomic_write_json(out / "card.json", full)
    atomic_write_text(out / "README.md", card_markdown(full))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"written {out} ({size / 1e6:.2f} MB, {'float16' if half else 'float32'})")
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
