"""A run report: one self-contained HTML page (images as base64 data URIs, no script, no
network) with the config, metrics, training curves, the KL heatmap of Fig. 2, active units,
samples at several temperatures, the partial generations of Fig. 12, reconstructions and an
interpolation in the top latent. Written by ``biva report RUN_DIR``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LogNorm

from biva.data import evaluation_split, load_run_data, to_model_input
from biva.evaluation.diagnostics import diagnose
from biva.evaluation.generation import (
    save_interpolation_grid,
    save_partial_generation_grid,
    save_reconstruction_grid,
    save_sample_grid,
)
from biva.evaluation.style import HEATMAP_CMAP, TRAIN_COLOR, VALID_COLOR, figure, png_bytes
from biva.runs.loading import load_trained
from biva.utils.atomic import atomic_write_json, atomic_write_text
from biva.utils.jsonl import read_jsonl

KL_FLOOR = 1e-3  # nats; the log-scale heatmap clips smaller (or negative MC) estimates here
LN2 = math.log(2)


# ------------------------------------------------------------------------------------ figures
def plot_curves(curves: dict, dims: int) -> bytes:
    """PNG: L_1 (ELBO), log p(x|z) and total KL, train and validation, nats vs training step.

    ``curves``: :func:`biva.evaluation.diagnostics.training_curves`; ``dims``: pixels x
    channels, for the bits/dim axis of the ELBO panel.
    """
    tr, va = curves["train"], curves["valid"]

    def points(steps, values):
        pairs = [(s, v) for s, v in zip(steps, values, strict=False) if v is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    with figure(3) as (fig, axes):
        panels = [("elbo", "L_1 (ELBO)", "ELBO (nats / example)"),
                  ("log_px", "reconstruction term log p(x|z)", "log p(x|z) (nats / example)"),
                  ("kl", "KL(q || p), all groups", "KL (nats / example)")]
        for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
            xs, ys = points(tr["step"], tr[key])
            if xs:
                ax.plot(xs, ys, color=TRAIN_COLOR, label="train (batch mean)")
            if key in va:
                xs, ys = points(va["step"], va[key])
                if xs:
                    ax.plot(xs, ys, "o-", color=VALID_COLOR, ms=3, label="validation (EMA)")
            ax.set_title(title)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            if ax.lines:
                ax.legend()
        axes[0].secondary_yaxis(
            "right", functions=(lambda v: -v / (dims * LN2), lambda b: -b * dims * LN2)
        ).set_ylabel("bits / dim")
        return png_bytes(fig)


def plot_kl_heatmap(table: dict, valid_kl: dict[str, float] | None = None) -> bytes:
    """PNG (Fig. 2): KL per latent group (rows, z1 at the bottom) x epoch, log colour scale.

    ``table``: :func:`biva.evaluation.diagnostics.kl_per_epoch`; ``valid_kl``: the per-group
    KL of the checkpoint on validation data (nats), drawn as bars beside the map.
    """
    groups, epochs = table["groups"], table["epochs"]
    kl = np.clip(np.asarray(table["kl"], dtype=float).reshape(len(groups), len(epochs)),
                 KL_FLOOR, None)
    with figure(2, width=11, height=max(2.6, 0.32 * len(groups) + 1.4)) as (fig, axes):
        ax = axes[0]
        if groups and epochs:
            finite = kl[np.isfinite(kl)]
            norm = LogNorm(vmin=max(finite.min(), KL_FLOOR), vmax=max(finite.max(), 2 * KL_FLOOR))
            im = ax.imshow(kl, aspect="auto", origin="lower", cmap=HEATMAP_CMAP, norm=norm,
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, label="KL (nats / example)")
            ticks = np.unique(np.linspace(0, len(epochs) - 1, min(len(epochs), 10)).round())
            ax.set_xticks(ticks, [str(epochs[int(t)]) for t in ticks])
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels(groups)
        ax.grid(False)
        ax.set_xlabel("epoch")
        ax.set_ylabel("latent group")
        ax.set_title("training KL per latent group and epoch")
        ax = axes[1]
        if valid_kl:
            names = list(valid_kl)
            ax.barh(range(len(names)), [max(valid_kl[g], KL_FLOOR) for g in names],
                    color=VALID_COLOR)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names)
            ax.set_xscale("log")
        ax.set_xlabel("KL(q || p) (nats / example, log scale)")
        ax.set_ylabel("latent group")
        ax.set_title("validation KL per group (checkpoint)")
        return png_bytes(fig)


def plot_active_units(au: dict) -> bytes:
    """PNG: active and total latent dimensions per group (Burda et al. 2016 criterion)."""
    names = list(au["per_group"])
    active = [au["per_group"][g]["active"] for g in names]
    dims = [au["per_group"][g]["dims"] for g in names]
    with figure(1, width=7, height=max(2.4, 0.32 * len(names) + 1.2)) as (fig, axes):
        ax = axes[0]
        ax.barh(range(len(names)), dims, color="#dddddd", label="dimensions")
        ax.barh(range(len(names)), active, color=TRAIN_COLOR, label="active")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        ax.set_xlabel("latent dimensions (count)")
        ax.set_title(f"active units: {au['active']} of {au['dims']} "
                     f"(Var_x E_q[u] > {au['threshold']:g})")
        ax.legend(loc="lower right")
        return png_bytes(fig)


# ------------------------------------------------------------------------------------ HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated;
display:block;margin:.4em 0}figure{margin:.6em 0}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}.muted{color:#777}
"""


def data_uri(png: bytes) -> str:
    """PNG bytes -> ``data:image/png;base64,...`` (embedded, so the page needs no files)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "&ndash;" if not math.isfinite(v) else f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.3f}"
    return "&ndash;" if v is None else html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bpd(nats, dims: int):
    return None if nats is None else -nats / (dims * LN2)


def metrics_tables(run_dir: Path, records: list[dict], dims: int) -> str:
    """HTML tables: latest train record, best validation record, every eval_*.json (nats, bpd)."""
    parts = []
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    rows = []
    if train:
        r = train[-1]
        rows.append(["latest train record (batch mean)", r.get("step"), r.get("elbo"),
                     _bpd(r.get("elbo"), dims), r.get("log_px"), r.get("kl")])
    if valid:
        r = max(valid, key=lambda v: v.get("valid_elbo", -math.inf))
        kl = r.get("valid_kl_groups")
        rows.append(["best validation (EMA)", r.get("step"), r.get("valid_elbo"),
                     r.get("valid_bpd"), r.get("valid_log_px"),
                     float(sum(kl.values())) if kl else None])
    parts.append(_table(["record", "step", "L_1 (nats)", "L_1 (bits/dim)", "log p(x|z) (nats)",
                         "KL (nats)"], rows) if rows else '<p class="muted">no metrics</p>')
    evals = []
    for path in sorted(run_dir.glob("eval_*.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file must not break the report
        k = res.get("k")
        evals.append([path.name, res.get("split"), res.get("n_examples"), res.get("L_1"),
                      res.get("L_1_bpd"), k, res.get(f"L_{k}") if k else None,
                      res.get(f"L_{k}_bpd") if k else None])
    if evals:
        parts.append(_table(["file", "split", "examples", "L_1 (nats)", "L_1 (bits/dim)", "k",
                             "L_k (nats)", "L_k (bits/dim)"], evals))
    else:
        parts.append('<p class="muted">no eval_*.json yet (run <code>biva evaluate</code>)</p>')
    return "\n".join(parts)


def _report_figures(model, test, kind, bits, figs: Path, *, n_images: int,
                    temperatures: Sequence[float], seed: int, device) -> dict[str, bytes]:
    """The report's PNGs (also written under ``figs``): samples at each temperature, partial
    generations, reconstructions and interpolations of the first test images."""
    n_img = min(2 * n_images, len(test))
    x = to_model_input(test.images[:n_img], kind, bits).to(device)
    half = max(n_img // 2, 1)
    grids = {
        "samples": save_sample_grid(model, figs / "samples_temperatures.png", kind,
                                    temperatures=temperatures, seed=seed),
        "partial": save_partial_generation_grid(model, x[:n_images], figs / "partial.png", kind,
                                                seed=seed),
        "recon": save_reconstruction_grid(model, x, figs / "reconstructions.png", kind,
                                          seed=seed),
        "interp": save_interpolation_grid(model, x[:half], x[half:2 * half],
                                          figs / "interpolation.png", kind, seed=seed),
    }
    return {k: p.read_bytes() for k, p in grids.items()}


def _report_sections(run_dir: Path, cfg, data_name: str, L: int, state: dict, diag: dict,
                     records: list, dims: int, png: dict[str, bytes],
                     temperatures: Sequence[float]) -> list[str]:
    """The report's HTML sections, in page order."""
    au = diag["active_units"]
    ess = diag.get("ess")
    title = f"biva report: {cfg.name} ({cfg.model.variant}, L={L}) on {data_name}"
    group_rows = [[g, diag["kl_groups"].get(g), au["per_group"].get(g, {}).get("active"),
                   au["per_group"].get(g, {}).get("dims")] for g in diag["kl_groups"]]
    temps_text = ", ".join(f"{t:g}" for t in temperatures)
    return [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">run <code>{html.escape(str(run_dir))}</code>; checkpoint '
        f'<code>{html.escape(Path(state["checkpoint"]).name)}</code> (EMA weights, step '
        f'{_fmt(state.get("step"))}); written {html.escape(time.strftime("%Y-%m-%d %H:%M:%S"))}'
        "</p>",
        "<h2>Config</h2>",
        "<details><summary>resolved config (config.json)</summary><pre>"
        + html.escape(_config_text(run_dir)) + "</pre></details>",
        "<h2>Metrics</h2>", metrics_tables(run_dir, records, dims),
        "<h2>Training curves</h2>",
        _img(plot_curves(diag["curves"], dims), "training curves",
             "L_1 and its two terms (Fig. 9): the gap between the ELBO and log p(x|z) is the "
             "KL of all latent groups. Train: means over the logged batches of the bound itself "
             "(free bits change only the loss). Validation: EMA weights."),
        "<h2>KL per latent group</h2>",
        _img(plot_kl_heatmap(diag["kl_per_epoch"], diag["kl_groups"]), "KL heatmap",
             f"Left: KL(q||p) of each latent group per training epoch (Fig. 2), log colour "
             f"scale, values below {KL_FLOOR:g} nats clipped. Right: the checkpoint's KL per "
             f"group on {diag['n_examples']} validation examples."),
        "<h2>Diagnostics (validation)</h2>",
        _table(["quantity", "value"], [
            ["examples", diag["n_examples"]], ["L_1 (nats)", diag["elbo"]],
            ["L_1 (bits/dim)", diag["elbo_bpd"]], ["log p(x|z) (nats)", diag["log_px"]],
            ["KL total (nats)", diag["kl"]],
            ["active units", f"{au['active']} / {au['dims']}"],
            *([[f"ESS of {ess['k']} importance weights (mean / median / min)",
                f"{ess['mean']:.1f} / {ess['median']:.1f} / {ess['min']:.1f}"]] if ess else []),
        ]),
        _table(["group", "KL (nats)", "active units", "dimensions"], group_rows),
        _img(plot_active_units(au), "active units",
             "A dimension u is active if Cov_x(E_q(u|x)[u]) > 0.01 (Burda et al. 2016)."),
        "<h2>Samples</h2>",
        _img(png["samples"], "samples",
             f"z ~ N(0, I) through the generative model, means of p(x|z). Rows: temperature "
             f"{temps_text} (latent standard deviations scaled), the same noise in every row "
             "(Fig. 10)."),
        "<h2>Generations from a fixed z<sub>&gt;i</sub></h2>",
        _img(png["partial"], "partial generations",
             "Rows: test images. Columns: the original, its reconstruction (i = 0), then z_>i "
             f"inferred from the image and z_<=i drawn from the prior for i = 1..{L - 1} "
             "(Fig. 12): moving right, the model has more freedom."),
        "<h2>Reconstructions</h2>",
        _img(png["recon"], "reconstructions",
             "Alternating rows: test images and the mean of p(x|z), z ~ q(z|x)."),
        "<h2>Interpolation in the top latent</h2>",
        _img(png["interp"], "interpolation",
             f"Per row: image a, the decoded straight line between the means of q(z_{L}|a) and "
             f"q(z_{L}|b), image b. Lower layers at temperature 0 (prior means)."),
    ]


# ------------------------------------------------------------------------------------ report
def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 checkpoint: str = "best", device: str | torch.device = "cpu",
                 data_root: str | None = None, n_examples: int = 1000, ess_k: int = 100,
                 ess_examples: int = 32, n_images: int = 8,
                 temperatures: Sequence[float] = (1.0, 0.85, 0.7, 0.5), seed: int = 0,
                 verbose: bool = False) -> Path:
    """Write RUN_DIR/report.html (or ``out``) and RUN_DIR/diagnostics.json; returns the HTML.

    Uses the EMA weights of ``checkpoint``; diagnostics on the first ``n_examples`` validation
    examples, images from the first test examples. PNGs also land in RUN_DIR/figures/report.
    ``verbose`` prints each stage, with its time, to stderr.
    """
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        if verbose:
            print(f"report [{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr,
                  flush=True)

    run_dir = Path(run_dir)
    stage("loading the model and data")
    model, cfg, state = load_trained(run_dir, checkpoint, device)
    if data_root:
        cfg.data.root = data_root
    data = load_run_data(cfg)
    kind, bits = data.kind, cfg.model.bits
    dims = math.prod(cfg.model.input_shape)
    metrics_path = run_dir / "metrics.jsonl"
    records = read_jsonl(metrics_path) if metrics_path.is_file() else []

    valid = evaluation_split(data, "valid", seed=cfg.train.seed)
    stage(f"diagnostics on {min(n_examples, len(valid))} validation images (ELBO, KL per "
          f"group, active units, ESS of {ess_k} weights on {ess_examples})")
    diag = diagnose(model, valid, kind, bits, metrics=records, n_examples=n_examples,
                    ess_examples=ess_examples, ess_k=ess_k, device=device)
    diag = {"run_dir": str(run_dir), "checkpoint": state["checkpoint"],
            "step": state.get("step"), "split": "valid", **diag}
    atomic_write_json(run_dir / "diagnostics.json", diag)

    stage("figures: samples, partial generations, reconstructions, interpolations")
    test = evaluation_split(data, "test", seed=cfg.train.seed)
    png = _report_figures(model, test, kind, bits, run_dir / "figures" / "report",
                          n_images=n_images, temperatures=temperatures, seed=seed,
                          device=device)
    sections = _report_sections(run_dir, cfg, data.name, model.n_layers, state, diag, records,
                                dims, png, temperatures)
    title = f"biva report: {cfg.name} ({cfg.model.variant}, L={model.n_layers}) on {data.name}"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    stage(f"written {out}")
    return out


def _config_text(run_dir: Path) -> str:
    path = run_dir / "config.json"
    try:
        return json.dumps(json.loads(path.read_text()), indent=2)
    except (OSError, ValueError):
        return f"{path}: not readable"
