"""An out-of-distribution detector with scikit-learn's outlier-detector conventions.

>>> det = OODDetector(model, kind="binary").fit(x_valid)   # in-distribution images only
>>> det.predict(x)             # +1 in-distribution, -1 out-of-distribution
>>> det.score_samples(x)       # higher = more normal (minus the anomaly score)
>>> det.decision_function(x)   # score_samples - offset_: negative = flagged
>>> det.save("run/ood/detector.json"); OODDetector.load("run/ood/detector.json", model)

The default score, ``"dos"`` (:mod:`biva.ood.density_of_states`), needs no anomaly
examples: it fits the density of every image's [L_K, LLR^{>1}, LLR^{>2}] on in-distribution
*validation* images (never the test split) and flags the improbable ones, in either direction.
The single scores (``"llr"``, ``"lk"``, ``"elbo"``, ...) need a k: fixed, or chosen in ``fit``
with ``k=None`` (or ``score=None``) by the highest AUROC against validation OOD images (real
ones, or the synthetic sets of :mod:`biva.ood.sets`). The threshold keeps
``in_tpr`` (default 95%) of the in-distribution validation images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from biva.data import ImageSplit, evaluation_split, load_run_data, to_model_input
from biva.ood.density_of_states import (
    DOS_SWEEP_SCORES,
    DensityOfStates,
    dos_columns,
    dos_ks,
    dos_statistics,
)
from biva.ood.metrics import ood_metrics
from biva.ood.scores import SCORES, BoundSweep, score_ks, sweep_batches
from biva.runs.loading import load_trained
from biva.utils.atomic import atomic_write_json

#: What a detector can score with: the single scores, and "dos" (no anomaly examples needed).
DETECTOR_SCORES = (*SCORES, "dos")


class OODDetector:
    """Flags images a trained hierarchy does not explain (anomaly: see ``score``).

    ``model``: a trained hierarchy (:class:`~biva.models.LatentHierarchy`); ``kind``:
    ``"binary"`` (a Bernoulli model) or ``"8bit"`` (a discretized-logistic model), and
    ``bits``: how images become model input (see ``to_model_input``). ``score``: ``"dos"``
    (default: the density of [L_K, LLR^{>k} for each ratio's k], fitted on in-distribution
    images alone; ``k`` = the ratios' k, None for the two lowest, 1 and 2), one of
    ``SCORES`` (anomaly LLR^{>k}, -L^{>k} or -L_K), or None (chosen in ``fit`` among
    ``candidates``); for a single score ``k`` is an int, candidate ints, or None (any k;
    chosen in ``fit``). Methods take
    x (N, C, H, W) uint8 images ready for evaluation (binary images drawn) or model-input
    floats, and return numpy arrays (N,).
    """

    def __init__(self, model: nn.Module, *, kind: str, bits: int = 8, score: str | None = "dos",
                 k: int | Sequence[int] | None = None,
                 candidates: Sequence[str] = ("llr", "lk", "elbo"),
                 n_samples: int = 1, in_tpr: float = 0.95, batch_size: int = 100,
                 seed: int = 0):
        if score is not None and score not in DETECTOR_SCORES:
            raise ValueError(f"score: expected one of {DETECTOR_SCORES} or None, found "
                             f"{score!r}")
        bad = [c for c in candidates if c not in SCORES]
        if bad:
            raise ValueError(f"candidates: unknown scores {bad}; known: {SCORES}")
        if not 0 < in_tpr < 1:
            raise ValueError(f"in_tpr: expected a rate in (0, 1), found {in_tpr}")
        n_layers = model.n_layers
        ks = [] if k is None else ([k] if isinstance(k, int) else list(k))
        if (k is not None and not ks) or any(not 0 <= v < n_layers for v in ks):
            raise ValueError(f"k: expected values in 0..{n_layers - 1} or None, found {k}")
        if score == "dos" and n_layers < 2:
            raise ValueError("score 'dos' needs a hierarchy (L >= 2) for its likelihood ratios")
        self.model, self.kind, self.bits = model, kind, bits
        self.score, self.k, self.candidates = score, k, tuple(candidates)
        self.n_samples, self.in_tpr, self.batch_size, self.seed = (
            n_samples, in_tpr, batch_size, seed)

    # ------------------------------------------------------------------ scoring
    def _input(self, x) -> Tensor:
        x = torch.as_tensor(x)
        if x.dtype == torch.uint8:
            x = to_model_input(x, self.kind, self.bits)
        return x.to(next(self.model.parameters()).device)

    def _sweep(self, x, scores: Sequence[str], ks: Sequence[int]) -> BoundSweep:
        x = self._input(x)
        torch.manual_seed(self.seed)  # a fixed draw: one image gets one score
        batches = (x[i:i + self.batch_size] for i in range(0, x.shape[0], self.batch_size))
        return sweep_batches(self.model, batches, ks, scores=scores, n_samples=self.n_samples)

    def _candidates(self) -> list[tuple[str, int]]:
        scores = [self.score] if self.score is not None else list(self.candidates)
        ks = (list(range(self.model.n_layers)) if self.k is None
              else [self.k] if isinstance(self.k, int) else sorted(set(self.k)))
        pairs = [(s, k) for s in scores for k in score_ks(s, ks)]
        if not pairs:
            raise ValueError(f"score {self.score!r} is not defined for k = {self.k} (the "
                             "likelihood ratios need k >= 1, elbo is k = 0)")
        return pairs

    def anomaly_score(self, x) -> np.ndarray:
        """Anomaly score of the fitted (score, k) for x: (N,) float64, higher = more anomalous."""
        self._check_fitted()
        return self.anomaly_from_sweep(self._sweep(x, *self.sweep_needs()))

    def sweep_needs(self) -> tuple[list[str], list[int]]:
        """The (scores, ks) a :func:`bound_sweep` must hold for the fitted detector."""
        self._check_fitted()
        if self.score_ == "dos":
            return list(DOS_SWEEP_SCORES), [0, *self.k_]
        return [self.score_], [self.k_]

    def anomaly_from_sweep(self, sweep: BoundSweep) -> np.ndarray:
        """The fitted detector's anomaly (N,) from bounds already computed (a sweep holding
        :meth:`sweep_needs`)."""
        self._check_fitted()
        if self.score_ == "dos":
            return self.dos_.anomaly(dos_statistics(sweep, self.k_))
        return sweep.anomaly(self.score_, self.k_).double().numpy()

    def score_samples(self, x) -> np.ndarray:
        """Normality (N,): minus the anomaly score, higher = more normal (scikit-learn)."""
        return -self.anomaly_score(x)

    def decision_function(self, x) -> np.ndarray:
        """score_samples - offset_ (N,): negative = out-of-distribution."""
        return self.score_samples(x) - self.offset_

    def predict(self, x) -> np.ndarray:
        """+1 for in-distribution, -1 for flagged images (N,) int."""
        return np.where(self.decision_function(x) >= 0, 1, -1)

    # ------------------------------------------------------------------ fitting
    def fit(self, x_in, x_out=None) -> OODDetector:
        """Fit on validation data: the density (``"dos"``) or the choice of (score, k), and
        the threshold; returns self.

        ``x_in``: in-distribution validation images; ``x_out``: optional validation OOD images
        (a tensor or a dict of named sets) for the choice of (score, k) by AUROC. Without them
        both must be given (``score`` and ``k`` not None), except that a single candidate
        needs no choice. ``"dos"`` never takes OOD images: it is fitted on ``x_in`` alone.
        """
        if self.score == "dos":
            if x_out is not None:
                raise ValueError("fit: score 'dos' is fitted on in-distribution images alone; "
                                 "x_out would not be used (leave it out)")
            return self.fit_sweeps(
                self._sweep(x_in, list(DOS_SWEEP_SCORES), [0, *self._dos_ks()]), {})
        pairs = self._candidates()
        scores = sorted({s for s, _ in pairs})
        ks = sorted({k for _, k in pairs})
        outs = {} if x_out is None else (dict(x_out) if isinstance(x_out, dict)
                                         else {"ood": x_out})
        if len(pairs) > 1 and not outs:
            raise ValueError("fit: several (score, k) candidates and no validation OOD "
                             "images to choose among them; pass x_out or fix score and k")
        sweep_in = self._sweep(x_in, scores, ks)
        sweeps_out = {name: self._sweep(x, scores, ks) for name, x in outs.items()}
        return self.fit_sweeps(sweep_in, sweeps_out)

    def fit_sweeps(self, sweep_in: BoundSweep, sweeps_out: dict[str, BoundSweep]
                   ) -> OODDetector:
        """:meth:`fit` on bounds already computed (:func:`bound_sweep` results that hold every
        candidate's (mode, k)): in-distribution validation, and named validation OOD sets
        (never read for ``"dos"``)."""
        if self.score == "dos":
            self.score_, self.selection_ = "dos", []
            self.k_ = self._dos_ks()
            self.dos_ = DensityOfStates().fit(dos_statistics(sweep_in, self.k_))
            return self._set_threshold(self.dos_.fit_anomaly_)
        pairs = self._candidates()
        self.selection_ = []
        if len(pairs) > 1:
            if not sweeps_out:
                raise ValueError("fit: several (score, k) candidates and no validation OOD "
                                 "images to choose among them; pass x_out or fix score and k")
            for s, k in pairs:
                a_in = sweep_in.anomaly(s, k).numpy()
                aurocs = {name: ood_metrics(-a_in, -sw.anomaly(s, k).numpy())["auroc"]
                          for name, sw in sweeps_out.items()}
                self.selection_.append({"score": s, "k": k, "auroc": aurocs,
                                        "mean_auroc": float(np.mean(list(aurocs.values())))})
            best = max(self.selection_, key=lambda r: r["mean_auroc"])
            self.score_, self.k_ = best["score"], best["k"]
        else:
            self.score_, self.k_ = pairs[0]
        return self._set_threshold(sweep_in.anomaly(self.score_, self.k_).double().numpy())

    def _set_threshold(self, a_in: np.ndarray) -> OODDetector:
        # Keep in_tpr of the in-distribution images: flag above their in_tpr quantile.
        self.threshold_ = float(np.quantile(a_in, self.in_tpr, method="higher"))
        self.offset_ = -self.threshold_
        self.n_fit_ = int(a_in.size)
        return self

    def _dos_ks(self) -> list[int]:
        """The ratios' k of the dos statistics: from ``k`` (>= 1 kept), or 1 and 2."""
        ks = None if self.k is None else [self.k] if isinstance(self.k, int) else self.k
        return dos_ks(self.model.n_layers, ks)

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("this OODDetector is not fitted yet: call fit(x_valid) first")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """The fitted state as JSON-ready values; the model is identified, not included
        (``model_sha256``: :func:`model_fingerprint` of the weights it was fitted with)."""
        self._check_fitted()
        extra = ({"dos": {"columns": dos_columns(self.k_), **self.dos_.to_dict()}}
                 if self.score_ == "dos" else {})
        return {"score": self.score_, "k": self.k_, "threshold": self.threshold_,
                "in_tpr": self.in_tpr, "n_samples": self.n_samples, "kind": self.kind,
                "bits": self.bits, "seed": self.seed, "batch_size": self.batch_size,
                "n_fit": self.n_fit_, "selection": self.selection_,
                "model_sha256": model_fingerprint(self.model),
                "likelihood": self.model.config.likelihood, "n_layers": self.model.n_layers,
                "convention": "anomaly = LLR^{>k} for llr scores, minus the bound for the "
                              "bounds, minus the summed log densities of the statistics for "
                              "dos (k: the ratios' k); flagged (predict -1) when anomaly > "
                              "threshold", **extra}

    def save(self, path: str | Path) -> Path:
        """Write the fitted state to a JSON file (atomically); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> OODDetector:
        """A fitted detector from :meth:`save`'s file, scoring with ``model``.

        Every field is checked (a finite threshold, a known score and a k it is defined for,
        positive batch size and sample count, ...), and the file must have been fitted on
        ``model``'s weights (``model_sha256``) and likelihood; a ValueError names the file and
        the field otherwise."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a saved OODDetector ({type(err).__name__}: {err})"
                             ) from err
        d = _validated(d, path, model)
        det = cls(model, kind=d["kind"], bits=d["bits"], score=d["score"], k=d["k"],
                  n_samples=d["n_samples"], in_tpr=d["in_tpr"], batch_size=d["batch_size"],
                  seed=d["seed"])
        det.score_, det.k_ = d["score"], d["k"]
        det.threshold_ = float(d["threshold"])
        det.offset_ = -det.threshold_
        det.n_fit_, det.selection_ = d["n_fit"], d["selection"]
        if d["score"] == "dos":
            try:
                det.dos_ = DensityOfStates.from_dict(d.get("dos") or {}, 1 + len(d["k"]))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from err
        return det


#: The likelihood each kind of image data is scored with.
_KIND_LIKELIHOOD = {"binary": "bernoulli", "8bit": "discretized_logistic"}


def model_fingerprint(model: nn.Module, *, older_names: bool = False) -> str:
    """SHA-256 of a model's weights (every state_dict entry's name, dtype, shape and bytes):
    which model a detector was fitted with. ``older_names``: under the names older code gave
    the entries (``model.older_key_names()``), as in detectors that code fitted."""
    import hashlib

    rename = model.older_key_names() if older_names else {}
    digest = hashlib.sha256()
    for name, t in sorted(((rename.get(k, k), t) for k, t in model.state_dict().items()),
                          key=lambda item: item[0]):
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): a 0-d tensor of a wider dtype (batch norm's step count, int64) cannot
        # be viewed as bytes directly.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _validated(d, path: Path, model: nn.Module) -> dict:
    """The fields of a detector file, each checked; a ValueError names the first bad one."""
    import math
    import warnings

    def fail(field: str, expected: str) -> None:
        found = d.get(field, "<missing>") if isinstance(d, dict) else d
        raise ValueError(f"{path}: {field}: expected {expected}, found {found!r}")

    def integer(field: str, low: int, high: float = math.inf) -> None:
        v = d.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            fail(field, f"an integer in {low}..{high}")

    if not isinstance(d, dict):
        fail("(top level)", "a JSON object")
    if d.get("score") not in DETECTOR_SCORES:
        fail("score", f"one of {DETECTOR_SCORES}")
    if d["score"] == "dos":
        ks = d.get("k")
        if (not isinstance(ks, list) or not ks or ks != sorted(set(ks)) or any(
                isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < model.n_layers
                for v in ks)):
            fail("k", f"for dos, an increasing list of the ratios' k in 1..{model.n_layers - 1}")
    else:
        integer("k", 0, model.n_layers - 1)
        if d["k"] not in score_ks(d["score"], [d["k"]]):
            fail("k", f"a k that score {d['score']!r} is defined for (elbo: 0; ratios: >= 1)")
    t = d.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        fail("threshold", "a finite number (a NaN or infinite threshold flags all or nothing)")
    v = d.get("in_tpr")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        fail("in_tpr", "a rate in (0, 1)")
    integer("batch_size", 1)
    integer("n_samples", 1)
    integer("n_fit", 1)
    integer("bits", 1, 16)
    integer("seed", -(2**63), 2**63 - 1)
    if not isinstance(d.get("selection"), list):
        fail("selection", "a list")
    if d.get("kind") not in _KIND_LIKELIHOOD:
        fail("kind", f"one of {list(_KIND_LIKELIHOOD)}")
    likelihood = getattr(getattr(model, "config", None), "likelihood", None)
    if likelihood is not None and _KIND_LIKELIHOOD[d["kind"]] != likelihood:
        raise ValueError(f"{path}: kind: fitted for {d['kind']} images, but the model has a "
                         f"{likelihood} likelihood: this detector belongs to another model")
    if "model_sha256" not in d:
        warnings.warn(f"{path}: written by an older biva without model_sha256: it cannot be "
                      "checked against the model; refit it (biva ood) to record one",
                      stacklevel=3)
    elif d["model_sha256"] != (found := model_fingerprint(model)) and (
            d["model_sha256"] != model_fingerprint(model, older_names=True)):
        raise ValueError(f"{path}: model_sha256: fitted on other weights ({d['model_sha256']}) "
                         f"than the model given ({found}); refit the detector for this model "
                         "(biva ood RUN_DIR)")
    return d


def detector_for_run(run_dir: str | Path, *, checkpoint: str = "best", device="cpu",
                     data_root: str | None = None, threads: int | None = None,
                     verbose: bool = True, **kwargs) -> OODDetector:
    """A detector for a trained run (its ``checkpoint``): :func:`detector_for_model` on the
    run's model and config, its data read from ``data_root`` if given. ``threads`` sets
    torch's CPU threads; ``kwargs`` go to :func:`detector_for_model`.

    >>> det = detector_for_run("runs/fmnist")
    >>> det.predict(images)      # images (N, C, H, W) uint8 like the run's data: +1 / -1
    """

    if threads:
        torch.set_num_threads(threads)
    model, cfg, _ = load_trained(run_dir, checkpoint, device)
    if data_root is not None:
        cfg.data.root = data_root
    return detector_for_model(model, cfg, name=str(run_dir), verbose=verbose, **kwargs)


def detector_for_model(model: nn.Module, cfg, *, score: str | None = "dos",
                       synthetic: Sequence[str] = ("uniform", "mean_noise", "constant",
                                                   "hflip", "vflip", "invert"),
                       n_valid: int = 1000, name: str = "the model", verbose: bool = True,
                       **kwargs) -> OODDetector:
    """A detector for ``model`` fitted on the first ``n_valid`` images of the validation split
    of its run config ``cfg``: no OOD image, no download, never the test split.

    ``score="dos"`` (default) fits the density of the bound statistics and needs nothing
    else; ``score=None`` instead chooses a single (score, k) against ``synthetic`` sets made
    from the validation images (which misses semantic shifts: see the anomaly-detection
    guide). ``kwargs`` go to :class:`OODDetector`. ``verbose`` says on stderr what it is doing
    (a sweep over every k: minutes on a CPU for a large model).
    """
    import sys
    import time


    started = time.perf_counter()
    data = load_run_data(cfg)
    valid = evaluation_split(data, "valid", cfg.train.seed)
    if n_valid:
        valid = valid.subset(torch.arange(min(n_valid, len(valid))))
    kwargs.setdefault("candidates", ("llr", "lk", "elbo"))
    det = OODDetector(model, kind=data.kind, bits=cfg.model.bits, seed=cfg.train.seed,
                      score=score, **kwargs)
    synthetic = () if score == "dos" else tuple(synthetic)
    if verbose:
        what = (f"and {len(synthetic)} synthetic sets ({', '.join(synthetic)}) scored for "
                "every (score, k)" if synthetic else "scored for the density of its bounds")
        print(f"fitting a detector for {name}: {len(valid)} validation images {what} on "
              f"{torch.get_num_threads()} thread(s) ...", file=sys.stderr, flush=True)
    det = fit_on_run_validation(det, valid, synthetic=synthetic, seed=cfg.train.seed)
    if verbose:
        print(f"{det.score_} at k = {det.k_}, threshold {det.threshold_:.3f} "
              f"(keeps {100 * det.in_tpr:.0f}% of the validation images), in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return det


def fit_on_run_validation(det: OODDetector, valid: ImageSplit, *, synthetic: Sequence[str] = (),
                          seed: int = 0) -> OODDetector:
    """Fit ``det`` on a run's validation split (ready for evaluation) with synthetic OOD sets
    made from the same validation images for the choice of (score, k); never the test split."""
    from biva.ood.sets import synthetic_set

    outs = {name: synthetic_set(name, valid, det.kind, seed).images for name in synthetic}
    return det.fit(valid.images, outs or None)
