"""The anomaly-detection experiment of ``biva ood`` (Table 5 / Figure 4 of the paper): score
an in-distribution test set and OOD sets with L_K, L^{>k}_K and LLR^{>k} for several k, choose
k on validation data, fit a detector on validation data, write tables, metrics, histograms and
per-example scores."""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biva.data import DatasetSplits, ImageSplit, evaluation_split, fit_to_shape, load_run_data
from biva.ood.density_of_states import DOS_SWEEP_SCORES, dos_ks_among
from biva.ood.detector import OODDetector
from biva.ood.metrics import (
    METRIC_CONVENTION,
    OOD_PAIRS,
    ood_metrics,
    ood_metrics_ci,
    ood_table,
    plot_ood_histograms,
    table_markdown,
)
from biva.ood.scores import SCORE_HELP, BoundSweep, parse_scores, score_ks, sweep_split
from biva.ood.sets import SYNTHETIC, load_like_run, synthetic_set
from biva.runs.loading import load_trained
from biva.utils.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_folder,
    staged_directory,
)
from biva.utils.parsing import parse_int_list
from biva.utils.progress import progress_bar


@dataclass
class OODSettings:
    """The experiment: which run, which sets, which scores. Field names are the options of
    ``biva ood``: ``prior_layers`` the k of L^{>k} ("0,2,4"; None: 0..L-1), ``n_samples`` the
    importance samples K, ``score`` the scores ("elbo,lk,llr"), ``n_valid`` the validation
    images a set (k chosen and detector fitted on them), ``detector`` "dos", "synthetic" or
    "none", ``out`` the output folder (None: RUN_DIR/ood)."""

    run_dir: Path
    pair: str | None = None
    in_data: str | None = None
    in_path: str | None = None
    ood_data: list[str] | None = None
    ood_path: list[str] = None  # type: ignore[assignment]
    ood_split: str = "test"
    fit_shape: bool = False
    prior_layers: str | None = None
    score: str = "elbo,lk,llr"
    n_valid: int = 1000
    detector: str = "dos"
    bootstrap: int = 200
    n_samples: int = 1
    n_examples: int = 0
    checkpoint: str = "best"
    batch_size: int = 100
    max_batch: int = 4096
    seed: int | None = None
    out: Path | None = None
    data_root: str | None = None
    amp: str = "none"
    progress: bool = False

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.ood_path = list(self.ood_path or [])

    @property
    def out_dir(self) -> Path:
        """Where the files go: ``out``, or RUN_DIR/ood."""
        return Path(self.out) if self.out is not None else self.run_dir / "ood"


_PATH_DATASETS = ("folder", "npz")


def parse_ks(text: str | None, n_layers: int) -> list[int]:
    """"0,2,4" -> [0, 2, 4], each in 0..L-1; None -> all of 0..L-1."""
    if text is None:
        return list(range(n_layers))
    ks = parse_int_list(text, "--prior-layers")
    bad = [k for k in ks if not 0 <= k < n_layers]
    if not ks or bad:
        raise ValueError(f"--prior-layers: expected values in 0..{n_layers - 1} (the model has L = "
                         f"{n_layers} layers), found {text!r}")
    return sorted(set(ks))


def _label(name: str, path: str | None, taken: set[str]) -> str:
    """A name usable as a CSV value and an npz key ({label}_k{k}); unique among ``taken``."""
    base = Path(path).stem if name in _PATH_DATASETS and path else name
    base = re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "data"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    taken.add(label)
    return label


def _eval_images(data: DatasetSplits, which: str, seed: int) -> ImageSplit:
    if which == "test":
        return evaluation_split(data, "test", seed)
    parts = [evaluation_split(data, s, seed) for s in ("train", "valid", "test")]
    return ImageSplit(torch.cat([p.images for p in parts]))


def _check_shape(name: str, split: ImageSplit, shape: tuple[int, ...], run_data: str) -> None:
    got = tuple(int(s) for s in split.images.shape[1:])
    if got != tuple(shape):
        raise ValueError(f"{name}: images of shape {got} (C, H, W) cannot be scored by a model "
                         f"of input shape {tuple(shape)} (trained on {run_data}); --fit-shape "
                         "converts 8-bit images (grey <-> colour, resize)")


def _resolve_sets(settings: OODSettings) -> tuple[str | None, list[str]]:
    in_name, ood = settings.in_data, settings.ood_data
    if settings.pair is not None:
        pair_in, pair_ood = OOD_PAIRS[settings.pair]
        in_name = in_name or pair_in
        ood = ood or list(pair_ood)
    if not ood:
        raise ValueError("name the OOD dataset(s) with --ood-data NAME [NAME ...] or --pair "
                         f"({', '.join(sorted(OOD_PAIRS))})")
    n_path = sum(name in _PATH_DATASETS for name in ood)
    if len(settings.ood_path) != n_path:
        raise ValueError(f"--ood-path: expected one path per folder/npz entry of --ood-data "
                         f"({n_path}), found {len(settings.ood_path)}")
    return in_name, list(ood)


_COLUMNS = {"lk": "L_gt{k}_nats", "llr": "LLR_gt{k}_nats", "lk_mean": "L_gt{k}_mean_nats",
            "llr_mean": "LLR_gt{k}_mean_nats"}


_KEYS = {"lk": "{name}_k{k}", "llr": "{name}_llr_k{k}", "lk_mean": "{name}_mean_k{k}",
         "llr_mean": "{name}_llr_mean_k{k}"}


def _write_scores(out: Path, sweeps: dict[str, BoundSweep], in_label: str, ks: list[int],
                  scores: list[str], detector_anomaly: dict[str, np.ndarray] | None = None
                  ) -> None:
    """scores.npz / scores.csv: L^{>k} for every k (k = 0 is L_K), each ratio requested, and
    the fitted detector's anomaly score ({name}_detector / detector_anomaly) when there is one."""
    kinds = ["lk"] + [s for s in ("llr", "lk_mean", "llr_mean") if s in scores]
    cols = [(kind, k) for kind in kinds for k in (ks if kind == "lk" else score_ks(kind, ks))]
    arrays = {_KEYS[kind].format(name=name, k=k): sw.value(kind, k).double().numpy()
              for name, sw in sweeps.items() for kind, k in cols}
    det = detector_anomaly or {}
    arrays.update({f"{name}_detector": a for name, a in det.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "scores.npz", buf.getvalue())
    with atomic_open(out / "scores.csv", "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["dataset", "role", "index"] + [_COLUMNS[kind].format(k=k)
                                                   for kind, k in cols]
                   + (["detector_anomaly"] if det else []))
        for name, sw in sweeps.items():
            role = "in" if name == in_label else "ood"
            values = [sw.value(kind, k).tolist() for kind, k in cols]
            if det:
                values.append(det[name].tolist())
            for i, row in enumerate(zip(*values, strict=True)):
                w.writerow([name, role, i] + [repr(float(v)) for v in row])


def _sets(settings, in_name, ood_names, run_data, cfg, seed):
    """[(label, name, test split, validation split or None)], in-distribution first."""
    in_data = run_data if in_name in (None, cfg.data.name) and not settings.in_path else \
        load_like_run(in_name or cfg.data.name, settings.in_path, run_data, root=cfg.data.root,
                      seed=seed)
    taken: set[str] = set()
    in_label = _label(in_data.name, settings.in_path or cfg.data.path, taken)
    in_test = evaluation_split(in_data, "test", seed)
    in_valid = evaluation_split(in_data, "valid", seed)
    sets = [(in_label, in_data.name, in_test, in_valid)]
    paths = iter(settings.ood_path)
    for name in ood_names:
        if name in SYNTHETIC:
            # Test images from the test split, validation images from the validation split.
            sets.append((_label(name, None, taken), name,
                         synthetic_set(name, in_test, run_data.kind, seed),
                         synthetic_set(name, in_valid, run_data.kind, seed + 1)))
            continue
        path = next(paths) if name in _PATH_DATASETS else None
        data = load_like_run(name, path, run_data, root=cfg.data.root, seed=seed)
        if name in _PATH_DATASETS and settings.ood_split == "test":
            total = len(data.train) + len(data.valid) + len(data.test)
            print(f"note: {path}: scoring its held-out test part ({len(data.test)} of {total} "
                  f"images, a seeded random sample; its valid part, {len(data.valid)}, chooses "
                  "k); --ood-split all scores every image", file=sys.stderr)
        valid = evaluation_split(data, "valid", seed) if settings.ood_split == "test" else None
        test = _eval_images(data, settings.ood_split, seed)
        if settings.fit_shape and data.kind == "8bit":
            shape = tuple(cfg.model.input_shape)
            test = fit_to_shape(test, shape)
            valid = None if valid is None else fit_to_shape(valid, shape)
        sets.append((_label(name, path, taken), name, test, valid))
    return sets


def _sweep(model, split, kind, bits, ks, scores, settings, n, seed, desc) -> BoundSweep:
    torch.manual_seed(seed)   # each set's scores do not depend on which sets came before
    device = next(model.parameters()).device
    total = min(n or len(split), len(split))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.amp == "bf16"), \
            progress_bar(total, desc, settings.progress) as update:
        return sweep_split(model, split, kind, bits, ks, scores=scores,
                           n_samples=settings.n_samples, batch_size=settings.batch_size,
                           max_batch=settings.max_batch, n_examples=n, progress=update)


def _score_all(model, sets, kind, bits, all_ks, sweep_scores, settings, seed):
    """(test sweeps, validation sweeps) of every set: L^{>k} for every k and the scores."""
    sweeps: dict[str, BoundSweep] = {}
    valid_sweeps: dict[str, BoundSweep] = {}
    for label, _name, split, valid in sets:
        t = time.perf_counter()
        sweeps[label] = _sweep(model, split, kind, bits, all_ks, sweep_scores, settings,
                               settings.n_examples, seed, f"{label} (test)")
        if settings.n_valid > 0 and valid is not None:
            valid_sweeps[label] = _sweep(model, valid, kind, bits, all_ks, sweep_scores,
                                         settings, settings.n_valid, seed + 1,
                                         f"{label} (valid)")
        n = sweeps[label].bounds[("sample", 0)].numel()
        n_valid = (valid_sweeps[label].bounds[("sample", 0)].numel()
                   if label in valid_sweeps else 0)
        print(f"scored {label}: {n} test + {n_valid} validation examples x {len(all_ks)} k "
              f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return sweeps, valid_sweeps


def _metrics(sets, sweeps, valid_sweeps, scores_wanted, ks, all_ks, settings, seed):
    """({score: {set: {k: test metrics}}}, {score: {set: the k chosen on validation AUROC,
    with its test metrics}})."""
    in_label = sets[0][0]
    metrics: dict = {}
    selected: dict = {}
    for score in scores_wanted:
        sks = score_ks(score, all_ks if score == "elbo" else ks)
        metrics[score], selected[score] = {}, {}
        for label, _n, _s, _v in sets[1:]:
            metrics[score][label] = {
                str(k): ood_metrics_ci(-sweeps[in_label].anomaly(score, k),
                                       -sweeps[label].anomaly(score, k),
                                       n_boot=settings.bootstrap, seed=seed) for k in sks}
            if sks and in_label in valid_sweeps and label in valid_sweeps:
                valid_auroc = {k: ood_metrics(-valid_sweeps[in_label].anomaly(score, k),
                                              -valid_sweeps[label].anomaly(score, k))["auroc"]
                               for k in sks}
                k_best = max(valid_auroc, key=valid_auroc.get)
                selected[score][label] = {"k": k_best, "valid_auroc": valid_auroc[k_best],
                                          "valid_auroc_per_k": {str(k): v for k, v in
                                                                valid_auroc.items()},
                                          **metrics[score][label][str(k_best)]}
    return metrics, selected


def _write_histograms(out, lk_scores, sweeps, in_label, kind, dims, ks, scores_wanted) -> None:
    plot_ood_histograms(lk_scores, out / "histograms.png", in_name=in_label, kind=kind,
                        dims=dims, ks=sorted(ks, reverse=True))
    for score in scores_wanted:
        if score.startswith("llr"):
            vals = {label: {k: sw.value(score, k) for k in score_ks(score, ks)}
                    for label, sw in sweeps.items()}
            if vals[in_label]:
                plot_ood_histograms(vals, out / f"histograms_{score}.png", in_name=in_label,
                                    kind="binary", dims=dims, ks=sorted(vals[in_label],
                                                                         reverse=True),
                                    quantity="LLR" if score == "llr" else "LLR (mean)")


def _prepare(settings: OODSettings, device):
    """(model, cfg, checkpoint state, the run's data, seed, ks, sets, in-distribution name)."""
    in_name, ood_names = _resolve_sets(settings)
    model, cfg, state = load_trained(settings.run_dir, settings.checkpoint, device)
    if settings.data_root:
        cfg.data.root = settings.data_root
    seed = cfg.train.seed if settings.seed is None else settings.seed
    ks = parse_ks(settings.prior_layers, model.n_layers)
    run_data = load_run_data(cfg)
    if in_name is not None and in_name != cfg.data.name:
        print(f"note: the run was trained on {cfg.data.name}; scoring {in_name} as the "
              "in-distribution set", file=sys.stderr)
    sets = _sets(settings, in_name, ood_names, run_data, cfg, seed)
    for label, name, split, _valid in sets:
        _check_shape(name if label == name else f"{name} ({label})", split,
                     tuple(cfg.model.input_shape), cfg.data.name)
    return model, cfg, state, run_data, seed, ks, sets


#: Files that mark a folder as an earlier `biva ood` output (before the .biva-output marker).
OOD_OUTPUTS = ("metrics.json", "table.json")


def run_ood(settings: OODSettings, device: torch.device | str = "cpu") -> dict:
    """Score every set, choose k on validation data, fit the detector, write the files in
    ``settings.out_dir``; returns {"out", "table", "metrics"} (metrics as in metrics.json)."""
    scores_wanted = parse_scores(settings.score)
    use_dos = settings.detector == "dos" and settings.n_valid > 0
    # The table needs L^{>k} for every k ("lk") and the density detector L_K and every LLR
    # (prior means): swept along whatever --score asks for.
    sweep_scores = list(dict.fromkeys(scores_wanted + ["lk"] + (list(DOS_SWEEP_SCORES)
                                                                if use_dos else [])))
    check_output_folder(settings.out_dir, OOD_OUTPUTS)    # before the work, not after it
    model, cfg, state, run_data, seed, ks, sets = _prepare(settings, device)
    kind, bits, in_label = run_data.kind, cfg.model.bits, sets[0][0]
    all_ks = sorted(set(ks) | {0})
    t0 = time.perf_counter()
    sweeps, valid_sweeps = _score_all(model, sets, kind, bits, all_ks, sweep_scores, settings,
                                      seed)
    dims = int(np.prod(tuple(cfg.model.input_shape)))
    lk_scores = {label: {k: sw.bounds[("sample", k)] for k in ks}
                 for label, sw in sweeps.items()}
    table = ood_table(lk_scores, in_name=in_label, kind=kind, dims=dims,
                      n_samples=settings.n_samples)
    meta = {"run_dir": str(settings.run_dir), "checkpoint": state["checkpoint"],
            "step": state.get("step"), "seed": seed, "ood_split": settings.ood_split}
    table.update(meta)
    metrics, selected = _metrics(sets, sweeps, valid_sweeps, scores_wanted, ks, all_ks,
                                 settings, seed)
    out = settings.out_dir
    # The new set is written beside the old one and swapped in whole: a kill or a full disk
    # in the write phase leaves the earlier set as it was (and OUT.incomplete beside it).
    with staged_directory(out, written_by="biva ood", earlier=OOD_OUTPUTS) as stage:
        atomic_write_json(stage / "table.json", table)
        atomic_write_text(stage / "table.md", table_markdown(table))
        detector, detector_anomaly = _fit_detector(model, kind, bits, settings, sets,
                                                   valid_sweeps, sweeps, scores_wanted, ks,
                                                   seed, stage)
        result = {"convention": METRIC_CONVENTION, "in_distribution": in_label, "ks": ks,
                  "scores": scores_wanted,
                  "score_help": {s: SCORE_HELP[s] for s in scores_wanted},
                  "n_samples": settings.n_samples, "n_valid": settings.n_valid, **meta,
                  "metrics": metrics, "selected_on_validation": selected,
                  "detector": detector, "seconds": time.perf_counter() - t0}
        atomic_write_json(stage / "metrics.json", result)
        atomic_write_text(stage / "metrics.md", metrics_markdown(result))
        _write_histograms(stage, lk_scores, sweeps, in_label, kind, dims, ks, scores_wanted)
        _write_scores(stage, sweeps, in_label, ks, scores_wanted, detector_anomaly)
    return {"out": out, "table": table, "metrics": result}


def _fit_detector(model, kind, bits, settings, sets, valid_sweeps, sweeps, scores, ks, seed,
                  out) -> tuple[dict | None, dict[str, np.ndarray] | None]:
    """Fit the ``--detector`` on validation data, save it, and report how it does on every
    test OOD set; returns (that report, each set's test anomaly scores), or (None, None).
    dos reads the in-distribution validation images alone; synthetic chooses (score, k) on
    the synthetic sets only. Neither ever sees a real OOD image."""
    in_label = sets[0][0]
    if settings.detector == "none" or in_label not in valid_sweeps:
        return None, None
    if settings.detector == "dos":
        if not any(k >= 1 for k in ks):
            print("note: no detector fitted (dos needs a ratio: a --prior-layers value >= 1)",
                  file=sys.stderr)
            return None, None
        if valid_sweeps[in_label].bounds[("sample", 0)].numel() < 2:
            print("note: no detector fitted (dos fits a density: --n-valid >= 2 images)",
                  file=sys.stderr)
            return None, None
        det = OODDetector(model, kind=kind, bits=bits, score="dos", k=dos_ks_among(ks),
                          n_samples=settings.n_samples, batch_size=settings.batch_size, seed=seed)
        det.fit_sweeps(valid_sweeps[in_label], {})
        chosen_on = []
    else:
        synth = {label: valid_sweeps[label] for label, name, _s, _v in sets[1:]
                 if name in SYNTHETIC and label in valid_sweeps}
        if not synth:
            print("note: no detector fitted (--detector synthetic needs a synthetic "
                  "--ood-data set)", file=sys.stderr)
            return None, None
        det = OODDetector(model, kind=kind, bits=bits, score=None, k=sorted(set(ks) | {0}),
                          candidates=scores, n_samples=settings.n_samples,
                          batch_size=settings.batch_size, seed=seed)
        try:
            det.fit_sweeps(valid_sweeps[in_label], synth)
        except ValueError as err:
            print(f"note: no detector fitted ({err})", file=sys.stderr)
            return None, None
        chosen_on = sorted(synth)
    det.save(out / "detector.json")
    anomaly = {label: det.anomaly_from_sweep(sw) for label, sw in sweeps.items()}
    a_in = anomaly[in_label]
    report = {"score": det.score_, "k": det.k_, "threshold": det.threshold_,
              "chosen_on": chosen_on, "fitted_on": f"{det.n_fit_} {in_label} validation images",
              "test_in_flagged": float((a_in > det.threshold_).mean()), "test": {}}
    for label, _n, _s, _v in sets[1:]:
        a_out = anomaly[label]
        m = ood_metrics_ci(-a_in, -a_out, n_boot=settings.bootstrap, seed=seed)
        report["test"][label] = {"auroc": m["auroc"], "auroc_ci": m.get("auroc_ci"),
                                 "auprc": m["auprc"], "fpr_at_95_tpr": m["fpr_at_95_tpr"],
                                 "flagged": float((a_out > det.threshold_).mean())}
    return report, anomaly


def metrics_markdown(result: dict) -> str:
    """AUROC (95% bootstrap interval) per OOD set, score and k, plus the k chosen on validation
    data with its test AUROC / AUPRC / FPR80 / FPR95."""
    lines = [f"Detection of OOD test images; in-distribution: {result['in_distribution']} "
             f"(test split). K = {result['n_samples']}. OOD = positive class.", ""]
    ks = result["ks"]
    lines += ["| OOD set | score | " + " | ".join(f"k={k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for score, per_set in result["metrics"].items():
        for label, per_k in per_set.items():
            cells = []
            for k in ks:
                m = per_k.get(str(k)) or (per_k.get("0") if score == "elbo" and k == ks[0]
                                          else None)
                if m is None:
                    cells.append("")
                    continue
                ci = m.get("auroc_ci")
                cells.append(f"{m['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci
                                                    else ""))
            lines.append(f"| {label} | {score} | " + " | ".join(cells) + " |")
    sel = result.get("selected_on_validation") or {}
    if any(sel.values()):
        lines += ["", "k chosen by validation AUROC (validation images only), test metrics:",
                  "", "| OOD set | score | k | AUROC | AUPRC | FPR@80%TPR | FPR@95%TPR |",
                  "|---|---|---|---|---|---|---|"]
        for score, per_set in sel.items():
            for label, m in per_set.items():
                lines.append(f"| {label} | {score} | {m['k']} | {m['auroc']:.3f} | "
                             f"{m['auprc']:.3f} | {m['fpr_at_80_tpr']:.3f} | "
                             f"{m['fpr_at_95_tpr']:.3f} |")
    det = result.get("detector")
    if det:
        how = (f"(score, k) chosen on the synthetic validation sets {', '.join(det['chosen_on'])}"
               if det["chosen_on"] else "the density of [L_K, LLR^{>k} (prior means)] fitted "
               f"on {det.get('fitted_on', 'in-distribution validation images')}, no anomaly "
               "examples")
        ks = det["k"] if isinstance(det["k"], int) else ",".join(map(str, det["k"]))
        lines += ["", f"Detector (detector.json): score {det['score']}, k = {ks}: {how}; flags "
                  f"{100 * det['test_in_flagged']:.1f}% of the in-distribution test images.", "",
                  "| OOD set | AUROC | flagged |", "|---|---|---|"]
        for label, m in det["test"].items():
            ci = m.get("auroc_ci")
            auroc = f"{m['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            lines.append(f"| {label} | {auroc} | {100 * m['flagged']:.1f}% |")
    return "\n".join(lines) + "\n"
