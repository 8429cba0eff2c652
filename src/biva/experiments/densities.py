"""Complex 2-D densities (appendix D): fit the aggregate posterior of the top latent to exp(-U)/Z.

Setup (eq. 11). Data x ~ q(x) = N(0, I_2); the inference network maps x to z_1..z_L (2 units
each); the generative model is p(z_L) p(z_<L | z_L) p(x | z_1..) with an isotropic Gaussian
p(x | z) of fixed std and the top log-prior ``-beta U(z_L) - log Z(beta)``, beta annealed from
0.1 to 1. Maximizing E_q(x)[ELBO(x)] drives q(z_L) = E_q(x)[q(z_L | x)] towards exp(-U)/Z.

Metric. KL(q(z_L) || p(z_L)) between histograms on a 100 x 100 grid over (-2, 2)^2:
p_ij = exp(-U(c_ij)) / sum_kl exp(-U(c_kl)) at the bin centres c_ij, q_ij = the fraction of the
posterior samples that fall inside the box and land in bin ij. Samples outside the box are left
out (q is conditioned on the box; their fraction is reported as ``outside``). Empty bins
contribute 0 (0 log 0 = 0, exact for KL(q || p)); p is computed in log space and is > 0 in
every bin, so no epsilon is needed.

Choices where the paper is silent: the length of the learning-rate warm-up (10 % of the
iterations), the std of p(x | z) (``x_std``), a soft wall confining p(z_L) to the KL's box
(U2-U4 are not normalizable on R^2; see :class:`AnnealedPotential`), and the samples (a fresh
batch of x every iteration).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biva.config import HierarchyConfig, ModelConfig
from biva.evaluation.style import save_png
from biva.models.hierarchy import HierarchicalVAE
from biva.models.mlp import as_mlp
from biva.objectives.training import training_loss
from biva.utils.atomic import atomic_write_bytes, atomic_write_json

POTENTIALS = (1, 2, 3, 4)
MODELS = ("vae", "lvae", "lvae+", "biva")


# ------------------------------------------------------------------------------- potentials
def potential(index: int, z: Tensor) -> Tensor:
    """U_index(z) of Rezende & Mohamed (2015, Table 1); z: (..., 2) -> (...)."""
    z1, z2 = z[..., 0], z[..., 1]
    if index == 1:
        r = torch.linalg.vector_norm(z, dim=-1)
        return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logaddexp(
            -0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)
    w1 = torch.sin(2 * math.pi * z1 / 4)
    if index == 2:
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if index == 3:
        w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2,
                                -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    if index == 4:
        w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
        return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2,
                                -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    raise ValueError(f"potential: expected one of {POTENTIALS}, got {index!r}")


def grid_edges(extent: float = 2.0, bins: int = 100) -> np.ndarray:
    """The bins + 1 bin edges of the grid over (-extent, extent), one axis."""
    return np.linspace(-extent, extent, bins + 1)


def grid_centers(extent: float = 2.0, bins: int = 100) -> Tensor:
    """Bin centres (bins, bins, 2) float64; [i, j] = (z1 centre i, z2 centre j)."""
    e = grid_edges(extent, bins)
    c = torch.from_numpy((e[:-1] + e[1:]) / 2)
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1)


def target_log_grid(index: int, extent: float = 2.0, bins: int = 100) -> np.ndarray:
    """log p_ij of exp(-U) normalized over the grid's bins: (bins, bins), indexed [z1, z2]."""
    neg_u = -potential(index, grid_centers(extent, bins))
    return (neg_u - torch.logsumexp(neg_u.flatten(), 0)).numpy()


def target_grid(index: int, extent: float = 2.0, bins: int = 100) -> np.ndarray:
    """p_ij (bins, bins), summing to 1 (see :func:`target_log_grid`)."""
    return np.exp(target_log_grid(index, extent, bins))


class AnnealedPotential:
    """The top log-prior ``-beta U(z) - W(z) - log Z(beta)`` of the 2-D density runs.

    ``W(z) = sum_d relu(|z_d| - extent)^2 / (2 wall^2)`` is a soft wall that confines p(z_L) to
    the square the KL is measured on: U2-U4 are flat along z1 (not normalizable on R^2), so
    without it q(z_L) spreads along z1 out of any box for free (the entropy term pays for it;
    measured: 94% of the samples outside (-2, 2)^2 for U2). With it the trained target is the
    density the metric compares against, exp(-U) on the box. ``wall = 0`` drops W (then Z is
    taken over (-4, 4)^2). Z(beta) by quadrature on a ``bins`` x ``bins`` grid covering the
    wall's reach (10 wall widths past the box).
    """

    def __init__(self, index: int, extent: float = 2.0, wall: float = 0.05, bins: int = 400):
        if wall < 0 or extent <= 0:
            raise ValueError(f"AnnealedPotential: expected extent > 0 and wall >= 0, got "
                             f"extent={extent}, wall={wall}")
        self.index, self.extent, self.wall = index, extent, wall
        box = extent + 10 * wall if wall > 0 else 4.0
        z = grid_centers(box, bins).reshape(-1, 2)
        self._u, self._w = potential(index, z), self.wall_energy(z)
        self._log_cell = 2 * math.log(2 * box / bins)
        self._cached: tuple[float, float] | None = None  # (beta, log Z(beta))

    def wall_energy(self, z: Tensor) -> Tensor:
        """W(z) (..., 2) -> (...): 0 inside the box, quadratic outside (0 when wall = 0)."""
        if self.wall == 0:
            return z.new_zeros(z.shape[:-1])
        return 0.5 * ((z.abs() - self.extent).clamp_min(0) / self.wall).square().sum(-1)

    def log_partition(self, beta: float) -> float:
        """log Z(beta) = log of the integral of exp(-beta U - W), in nats."""
        # beta stays at 1 for the second half of a run: one quadrature, not one an iteration.
        if self._cached is None or self._cached[0] != beta:
            log_z = float(torch.logsumexp(-beta * self._u - self._w, 0)) + self._log_cell
            self._cached = (beta, log_z)
        return self._cached[1]

    def log_prior(self, beta: float) -> Callable[[Tensor], Tensor]:
        """A ``top_log_prior`` for :meth:`HierarchicalVAE.forward`: z (N, 2) -> (N,) nats."""
        log_z = self.log_partition(beta)

        def log_p(z: Tensor) -> Tensor:
            z = z.float()
            return -beta * potential(self.index, z) - self.wall_energy(z) - log_z

        return log_p


# ------------------------------------------------------------------------------- metric
def histogram(samples: np.ndarray, extent: float = 2.0, bins: int = 100
              ) -> tuple[np.ndarray, int]:
    """Counts (bins, bins) of samples (N, 2) on the grid, indexed [z1, z2], and how many fell
    outside the box."""
    e = grid_edges(extent, bins)
    counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[e, e])
    return counts.astype(np.int64), int(len(samples) - counts.sum())


def grid_kl(counts: np.ndarray, log_p: np.ndarray) -> float:
    """KL(q || p) in nats, q = counts / counts.sum() (the samples inside the box), log p the
    target's log bin probabilities; empty q bins contribute 0."""
    total = counts.sum()
    if total == 0:
        return float("inf")  # every sample left the box: nothing of q overlaps the target
    q = counts / total
    m = q > 0
    return float(np.sum(q[m] * (np.log(q[m]) - log_p[m])))


# ------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class DensityConfig:
    """One density run (appendix D defaults). ``anneal_fraction``/``warmup_fraction`` are
    fractions of ``iterations`` (5,000 of 10,000 in the paper); ``wall`` is the width of the
    soft wall at the KL box (-extent, extent)^2 (0: none, see :class:`AnnealedPotential`)."""

    iterations: int = 10_000
    batch_size: int = 512
    beta_start: float = 0.1
    anneal_fraction: float = 0.5
    free_bits: float = 0.5
    lr_min: float = 1e-5
    lr_max: float = 3e-3
    warmup_fraction: float = 0.1
    x_std: float = 0.1
    layers: int = 5
    latent_units: int = 2
    hidden: int = 128
    blocks: int = 1
    eval_samples: int = 1_000_000
    extent: float = 2.0
    bins: int = 100
    wall: float = 0.05

    def quick(self) -> DensityConfig:
        """A smoke-test version: 300 iterations, 10^4 evaluation samples."""
        return replace(self, iterations=300, eval_samples=10_000)


def model_config(variant: str, cfg: DensityConfig) -> ModelConfig:
    """The hierarchy of the appendix: L dense 2-unit latents, residual MLP stages (1x1 maps)."""
    return HierarchyConfig(
        variant=variant, input_shape=(2, 1, 1), likelihood="gaussian", likelihood_std=cfg.x_std,
        latents=(cfg.latent_units,) * cfg.layers, latent_type="dense", filters=(cfg.hidden,),
        kernels=(1,), strides=(1,), blocks=cfg.blocks, dropout_q=0.0, dropout_p=0.0)


def build_model(variant: str, cfg: DensityConfig) -> HierarchicalVAE:
    """An un-initialized density model (see :func:`model_config`), run as an MLP."""
    return as_mlp(HierarchicalVAE(model_config(variant, cfg)))


def learning_rate(step: int, cfg: DensityConfig) -> float:
    """Linear lr_min -> lr_max over the warm-up, then exponential back to lr_min at the end."""
    warm = max(1, round(cfg.warmup_fraction * cfg.iterations))
    if step < warm:
        return cfg.lr_min + (cfg.lr_max - cfg.lr_min) * step / warm
    t = (step - warm) / max(1, cfg.iterations - 1 - warm)
    return cfg.lr_max * (cfg.lr_min / cfg.lr_max) ** min(t, 1.0)


def annealing(step: int, cfg: DensityConfig) -> float:
    """beta: linear from ``beta_start`` to 1 over the annealing iterations, then 1."""
    n = round(cfg.anneal_fraction * cfg.iterations)
    if n <= 0:
        return 1.0
    return min(1.0, cfg.beta_start + (1 - cfg.beta_start) * step / n)


def train(variant: str, index: int, seed: int, cfg: DensityConfig, device: str = "cpu"
          ) -> tuple[HierarchicalVAE, dict]:
    """Train one model on potential ``index``; returns it and {bound, skipped, cpu_seconds}.

    The seed fixes the initialization on the CPU; ``device`` ("cpu", "cuda", "cuda:1") runs
    the iterations there (its random stream, hence the exact draws, differs from the CPU's).

    ``bound`` is eq. 11 averaged over the last 100 iterations (nats, beta = 1 by then when
    annealing ends before them): E[log_weight] + H(q(x)), H(N(0, I_2)) = 1 + log 2 pi.
    """
    torch.manual_seed(seed)
    model = build_model(variant, cfg)
    model.initialize(torch.randn(cfg.batch_size, 2, 1, 1))
    model.to(device)
    prior = AnnealedPotential(index, cfg.extent, cfg.wall)
    opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr_min)
    model.train()
    skipped, tail = 0, []
    cpu0 = time.process_time()
    for step in range(cfg.iterations):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        x = torch.randn(cfg.batch_size, 2, 1, 1, device=device)
        out = model(x, top_log_prior=prior.log_prior(annealing(step, cfg)))
        out.loss = training_loss(out, free_bits=cfg.free_bits)
        if not torch.isfinite(out.loss):  # the one host sync of an iteration
            skipped += 1  # a rare overflow must not poison the weights; counted, reported
            continue
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step >= cfg.iterations - 100:
            tail.append(out.log_weight.detach().mean())
    cpu = time.process_time() - cpu0
    bound = (float(torch.stack(tail).mean()) + 1 + math.log(2 * math.pi) if tail
             else float("nan"))
    return model, {"bound": bound, "skipped": skipped, "cpu_seconds": cpu}


@torch.no_grad()
def posterior_samples(model: HierarchicalVAE, n: int, chunk: int = 100_000) -> np.ndarray:
    """n draws of z_L ~ q(z_L) (x ~ N(0, I_2), z ~ q(z | x)): (n, 2) float64."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    parts = []
    try:
        for start in range(0, n, chunk):
            # z_L needs the BU pass only: a third of a full forward pass for BIVA
            q_top = model.top_posterior(torch.randn(min(chunk, n - start), 2, 1, 1,
                                                    device=device))
            parts.append(q_top.sample().flatten(1).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(parts)


def run_one(variant: str, index: int, seed: int, cfg: DensityConfig, device: str = "cpu"
            ) -> tuple[dict, np.ndarray]:
    """Train and evaluate one (model, potential, seed): the run's record and q's histogram."""
    wall0 = time.perf_counter()
    model, stats = train(variant, index, seed, cfg, device)
    counts, outside = histogram(posterior_samples(model, cfg.eval_samples), cfg.extent, cfg.bins)
    kl = grid_kl(counts, target_log_grid(index, cfg.extent, cfg.bins))
    record = {
        "model": variant, "potential": index, "seed": seed, "kl": kl,
        "outside": outside / cfg.eval_samples, "bound": stats["bound"],
        "skipped": stats["skipped"], "cpu_seconds": round(stats["cpu_seconds"], 2),
        "cpu_seconds_per_100_iterations": round(100 * stats["cpu_seconds"] / cfg.iterations, 3),
        "wall_seconds": round(time.perf_counter() - wall0, 2), "device": str(device),
        "config": asdict(cfg),
    }
    return record, counts


# ------------------------------------------------------------------------------- experiment
def _init_worker() -> None:
    # One thread per process: the workers share the machine's cores.
    torch.set_num_threads(1)


def _task(args: tuple) -> tuple[dict, np.ndarray]:
    return run_one(*args)


def _run_name(variant: str, index: int, seed: int) -> str:
    return f"{variant.replace('+', 'plus')}_u{index}_s{seed}"


def summarize(runs: Iterable[dict]) -> dict:
    """{model: {"U<k>": {n, median, q1, q3, min, max, mean, median_outside}}} of the KLs."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["potential"]), []).append(r)
    summary: dict = {}
    for (variant, index), rs in sorted(groups.items()):
        kl = np.array([r["kl"] for r in rs], dtype=float)
        summary.setdefault(variant, {})[f"U{index}"] = {
            "n": len(rs), "median": float(np.median(kl)), "q1": float(np.percentile(kl, 25)),
            "q3": float(np.percentile(kl, 75)), "min": float(kl.min()), "max": float(kl.max()),
            "mean": float(kl.mean()),
            "median_outside": float(np.median([r["outside"] for r in rs])),
        }
    return summary


def median_run(runs: Sequence[dict]) -> dict:
    """The run whose KL is the (lower) median of ``runs``."""
    ordered = sorted(runs, key=lambda r: r["kl"])
    return ordered[(len(ordered) - 1) // 2]


def _check_names(models: Sequence[str], potentials: Sequence[int]) -> None:
    """Refuse unknown model names and potential numbers, naming the option."""
    for m in models:
        if m not in MODELS:
            raise ValueError(f"--models: expected names from {MODELS}, got {m!r}")
    for p in potentials:
        if p not in POTENTIALS:
            raise ValueError(f"--potentials: expected numbers from {POTENTIALS}, got {p!r}")


def _finished_and_todo(run_dir: Path, models, potentials, seeds, cfg: DensityConfig,
                       device: str) -> tuple[dict, dict, list]:
    """(records, histograms) of the runs already in ``run_dir`` with this config, and the
    tasks of the others."""
    records: dict[str, dict] = {}
    hists: dict[str, np.ndarray] = {}
    todo = []
    for m in models:
        for p in potentials:
            for s in seeds:
                name = _run_name(m, p, s)
                done = _load_run(run_dir, name, cfg)
                if done is None:
                    todo.append((m, p, s, cfg, device))
                else:
                    records[name], hists[name] = done
    return records, hists, todo


def run_experiment(models: Sequence[str], potentials: Sequence[int], seeds: Sequence[int],
                   cfg: DensityConfig, out: str | Path, workers: int = 1,
                   log: Callable[[str], None] = print, device: str = "cpu") -> dict:
    """All (model, potential, seed) runs, ``workers`` processes on ``device`` (several workers
    may share one GPU: the 2-D models are launch-bound); writes out/results.json,
    out/densities.png (Fig. 8), out/kl_boxplot.png (Fig. 7) and out/runs/* (one JSON and one
    histogram per run; runs already there with the same config are reused, so a killed
    experiment resumes). Returns the results dict."""
    _check_names(models, potentials)
    out = Path(out)
    run_dir = out / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    records, hists, todo = _finished_and_todo(run_dir, models, potentials, seeds, cfg, device)
    if records:
        log(f"reusing {len(records)} finished runs from {run_dir}")

    total = len(records) + len(todo)

    def finish(record: dict, counts: np.ndarray) -> None:
        name = _run_name(record["model"], record["potential"], record["seed"])
        atomic_write_bytes(run_dir / f"{name}.npy", _npy_bytes(counts))
        atomic_write_json(run_dir / f"{name}.json", record)
        records[name], hists[name] = record, counts
        log(f"[{len(records)}/{total}] {name}: KL {record['kl']:.4f} nats, "
            f"outside {record['outside']:.3f}, "
            f"{record['cpu_seconds_per_100_iterations']:.2f} CPU s / 100 it")

    if workers <= 1:
        for t in todo:
            finish(*_task(t))
    elif todo:
        ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools can hang
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(_task, t) for t in todo]
            for f in as_completed(futures):
                finish(*f.result())

    order = [_run_name(m, p, s) for m in models for p in potentials for s in seeds]
    runs = [_public(records[n]) for n in order]
    results = {"config": asdict(cfg), "models": list(models), "potentials": list(potentials),
               "seeds": list(seeds), "runs": runs, "summary": summarize(runs),
               "kl_note": "KL(q||p) on the grid; q = posterior samples inside the box "
                          "(fraction outside: 'outside'); empty q bins contribute 0"}
    atomic_write_json(out / "results.json", results)
    plot_densities(out / "densities.png", runs, {n: hists[n] for n in order}, models,
                   potentials, cfg)
    plot_kl_boxes(out / "kl_boxplot.png", runs, models, potentials)
    return results


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "config"}


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _load_run(run_dir: Path, name: str, cfg: DensityConfig) -> tuple[dict, np.ndarray] | None:
    js, npy = run_dir / f"{name}.json", run_dir / f"{name}.npy"
    if not (js.is_file() and npy.is_file()):
        return None
    record = json.loads(js.read_text())
    if record.get("config") != asdict(cfg):
        return None  # finished under other settings: run again
    return record, np.load(npy, allow_pickle=False)


# ------------------------------------------------------------------------------- figures
def plot_densities(path: str | Path, runs: Sequence[dict], hists: dict[str, np.ndarray],
                   models: Sequence[str], potentials: Sequence[int], cfg: DensityConfig) -> Path:
    """Fig. 8: per potential, the target and each model's median-KL q(z_L) on the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(potentials), 1 + len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False,
                             constrained_layout=True)
    ext = (-cfg.extent, cfg.extent, -cfg.extent, cfg.extent)
    for r, p in enumerate(potentials):
        panels = [("target", target_grid(p, cfg.extent, cfg.bins))]
        for m in models:
            rs = [x for x in runs if x["model"] == m and x["potential"] == p]
            best = median_run(rs)
            counts = hists[_run_name(m, p, best["seed"])]
            panels.append((f"{m}  KL {best['kl']:.3f}", counts / max(counts.sum(), 1)))
        for c, (title, grid) in enumerate(panels):
            ax = axes[r, c]
            # histograms are [z1, z2]; imshow wants rows = z2, columns = z1
            ax.imshow(grid.T, origin="lower", extent=ext, cmap="viridis", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"U{p}")
    e = f"{cfg.extent:g}"
    fig.suptitle(f"target p(z_L) and median-KL q(z_L) per model on (-{e}, {e})^2", fontsize=9)
    path = save_png(fig, path)
    plt.close(fig)
    return path


def plot_kl_boxes(path: str | Path, runs: Sequence[dict], models: Sequence[str],
                  potentials: Sequence[int]) -> Path:
    """Fig. 7: box plots of KL(q(z_L) || p(z_L)) over seeds, one panel per potential."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(potentials), figsize=(3.0 * len(potentials), 3.0),
                             squeeze=False, constrained_layout=True)
    for ax, p in zip(axes[0], potentials, strict=True):
        data = [[r["kl"] for r in runs if r["model"] == m and r["potential"] == p]
                for m in models]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(models) + 1), list(models))
        ax.set_title(f"U{p}", fontsize=9)
        ax.set_ylabel("KL(q(z_L) || p(z_L)) (nats)")
        ax.grid(alpha=0.3, axis="y")
    path = save_png(fig, path)
    plt.close(fig)
    return path
