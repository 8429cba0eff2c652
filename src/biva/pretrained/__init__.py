"""Pretrained models shipped with the package, and sharing in the Hugging Face Hub layout.

A pretrained model is a folder (inside the package for the shipped ones, anywhere for
:func:`from_pretrained`) holding:

* ``config.json``: the run config (model, data, train, eval) it was trained with;
* ``model.safetensors``: the EMA weights (float32, or float16 where the card's figures do not
  move beyond their Monte Carlo error);
* ``card.json``: the model card: data and split, the training command, commit, CPU-minutes
  and steps, the expected scores with their Monte Carlo error, and the sha256 of
  ``model.safetensors``;
* ``README.md``: the card for people (the Hub's model page);
* ``detector.json`` (optional): a fitted anomaly detector for it.

``load(name)`` checks the checksum before it reads a weight: a mismatch is refused, naming the
file, the expected and the found digest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from biva.config.run import RunConfig, read_run_config
from biva.data import image_files as image_files  # re-exported: part of the pretrained API
from biva.data import read_folder as read_folder
from biva.evaluation.classification import predict_raw
from biva.ood.detector import OODDetector
from biva.pretrained.measure import measure as measure  # part of the API
from biva.pretrained.measure import measure_interval as measure_interval
from biva.runs.loading import build_model, find_checkpoint, shape_mismatches
from biva.utils.atomic import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    staged_directory,
)
from biva.utils.checkpoint import load_checkpoint, save_checkpoint
from biva.utils.config_io import to_dict
from biva.utils.hashing import sha256_file
from biva.utils.run_lock import output_lock

#: Files every pretrained folder has.
REQUIRED = ("config.json", "model.safetensors", "card.json")
#: The files a card may vouch for (its ``sha256`` keys): the folder's own, nothing else.
CHECKED_FILES = ("model.safetensors", "config.json", "detector.json")
#: A card's ``name`` (it names ``runs/pretrained/NAME``): letters, digits, ".", "_", "-".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: The most bytes read from a JSON file of a pretrained folder, and from its weights: a
#: device, a FIFO or a huge file is refused before it is read.
MAX_JSON_BYTES = 8 << 20
MAX_WEIGHTS_BYTES = 4 << 30


class ChecksumError(RuntimeError):
    """A pretrained file whose sha256 is not the one its card states."""


@dataclass
class Pretrained:
    """A loaded pretrained model: ``model`` (eval mode, float32), its ``config``, ``card``
    (dict), the fitted ``detector`` (an :class:`~biva.ood.detector.OODDetector`)
    where one ships, and ``path``, the folder it came from."""

    name: str
    model: torch.nn.Module
    config: RunConfig
    card: dict[str, Any]
    path: Path
    detector: Any = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        """Whether the model has a classifier q(y|x) (a semi-supervised model)."""
        return hasattr(self.model, "classify")

    def predict_proba(self, images, *, n_samples: int = 1, seed: int = 0,
                      batch_size: int = 100) -> torch.Tensor:
        """q(y | x) for raw images (N, H, W), (N, H, W, C) or (N, C, H, W), as
        :func:`read_folder` gives them: (N, num_classes) float32, rows sum to 1; each row
        averages ``n_samples`` draws of z^BU at ``seed``."""

        if not self.is_classifier:
            raise ValueError(f"{self.name}: not a classifier (a semi-supervised model has "
                             f"one; shipped ones: {', '.join(_classifiers()) or 'none'})")
        return predict_raw(self.model, self.config.model, images, n_samples=n_samples,
                           batch_size=batch_size, seed=seed)

    def predict(self, images, *, n_samples: int = 1, seed: int = 0) -> torch.Tensor:
        """The most probable class of each raw image under q(y | x): (N,) int64."""
        return self.predict_proba(images, n_samples=n_samples, seed=seed).argmax(1)


def _shipped_root() -> Path:
    return Path(str(resources.files("biva") / "pretrained"))


def list_models() -> list[str]:
    """Names of the pretrained models shipped with the package."""
    root = _shipped_root()
    return sorted(p.name for p in root.iterdir() if (p / "card.json").is_file())


# ``biva.pretrained.list()``: the name users expect (as torch.hub.list).
list = list_models  # noqa: A001


def _classifiers() -> list[str]:
    """Shipped names whose config is semi-supervised (labels_per_class > 0)."""
    root = _shipped_root()
    return [n for n in list_models()
            if json.loads((root / n / "config.json").read_text())["data"].get(
                "labels_per_class", 0) > 0]


def _regular_file(path: Path, limit: int) -> int:
    """The size of ``path``, a regular file of at most ``limit`` bytes; anything else (a
    FIFO, a device such as /dev/zero, a folder, a huge file) is refused before it is read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (a folder, FIFO or device); a pretrained "
                         "folder holds plain files: replace it with the model's own file")
    if st.st_size > limit:
        raise ValueError(f"{path}: {st.st_size:,} bytes, more than the {limit:,} a "
                         f"{path.name} of a pretrained folder may have")
    return st.st_size


def _read_json(path: Path) -> Any:
    """A small JSON file of a pretrained folder (checked regular and size-capped first)."""
    _regular_file(path, MAX_JSON_BYTES)
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _damaged(path: Path, err: Exception) -> ValueError:
    """The one-line error for a safetensors file that cannot be read."""
    return ValueError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())}); "
                      "the file is damaged: restore it or re-create the folder with "
                      "save_pretrained")


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a safetensors file, from its header alone."""
    _regular_file(path, MAX_WEIGHTS_BYTES)
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # SafetensorError, a header length beyond the file, ...
        raise _damaged(path, e) from None


def _check_shapes(cfg: RunConfig, folder: Path) -> None:
    """Compare the weights' header with the model ``cfg`` describes, built on the meta device
    (no memory): a config edited to a huge model is refused before anything is allocated."""
    bad = shape_mismatches(cfg, folder, _weight_shapes(folder / "model.safetensors"))
    if bad:
        raise ValueError(f"{folder}: config.json and model.safetensors disagree on {bad}; "
                         "they are not one model's")


def _verified(folder: Path) -> tuple[dict, RunConfig]:
    """A pretrained folder's card and config, after the checks that build nothing: the files
    there, the card valid, the digests right, the config readable."""
    # Only what is absent: a FIFO or a link to a device is named by the regular-file checks.
    missing = [f for f in REQUIRED if not ((folder / f).exists() or (folder / f).is_symlink())]
    if missing:
        raise FileNotFoundError(f"{folder}: pretrained folder without {', '.join(missing)}")
    card = read_card(folder)
    verify(folder, card)
    return card, read_run_config(folder / "config.json")


def _checked(folder: Path) -> tuple[dict, RunConfig]:
    """:func:`_verified`, then the config's model compared with the weights' shapes on the
    meta device: what :func:`load` needs before it builds the model."""
    card, cfg = _verified(folder)
    _check_shapes(cfg, folder)
    return card, cfg


def _float32_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors of a pretrained folder, floating tensors as float32, every value
    checked finite (NaN or inf weights would give NaN images and bounds without a word)."""
    path = folder / "model.safetensors"
    _regular_file(path, MAX_WEIGHTS_BYTES)
    try:
        tensors = load_file(path)
    except Exception as e:  # SafetensorError: the same one line as the header check's
        raise _damaged(path, e) from None
    out = {}
    for k, v in tensors.items():
        if v.is_floating_point():
            v = v.float()
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise ValueError(f"{path}: {bad} non-finite values (NaN or inf) in {k}; the "
                                 "weights are damaged: restore the file")
        out[k] = v
    return out


def _folder(name_or_path: str | Path) -> Path:
    """A shipped model by name, else a folder. A bare shipped name always means the shipped
    model (a local folder of that name is ./NAME), so a folder cannot shadow it."""
    text = str(name_or_path)
    if text in list_models():
        return _shipped_root() / text
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise FileNotFoundError(f"pretrained model {text!r}: not a shipped name "
                            f"({', '.join(list_models()) or 'none shipped'}) nor a folder")


def read_card(folder: Path) -> dict[str, Any]:
    """The card.json of a pretrained folder, with the fields every card needs checked: its
    ``name`` (a plain name), ``sha256`` (a digest of model.safetensors and config.json, and of
    no file outside the folder), ``scores`` and ``training``."""
    path = folder / "card.json"
    card = _read_json(path)
    if not isinstance(card, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(card).__name__}")
    for key in ("name", "sha256", "scores", "training"):
        if key not in card:
            raise ValueError(f"{path}: field {key!r} missing (expected name, sha256, scores, "
                             f"training)")
    name = card["name"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or set(name) == {"."}:
        raise ValueError(f"{path}: name {name!r}: expected letters, digits, '.', '_' or '-' "
                         "(it names the folder runs/pretrained/NAME)")
    digests = card["sha256"]
    if not isinstance(digests, dict):
        raise ValueError(f"{path}: sha256: expected an object of file name -> hex digest, "
                         f"found {type(digests).__name__}")
    for fname, digest in digests.items():
        if fname not in CHECKED_FILES:
            raise ValueError(f"{path}: sha256 names {fname!r}; a card vouches only for its "
                             f"folder's own {', '.join(CHECKED_FILES)}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{path}: sha256 of {fname}: expected 64 hex digits, found "
                             f"{digest!r}")
    missing = [f for f in ("model.safetensors", "config.json") if f not in digests]
    if missing:
        raise ValueError(f"{path}: sha256 has no digest of {', '.join(missing)}; a card must "
                         "vouch for the weights and the config (re-create the folder with "
                         "save_pretrained)")
    return card


def verify(folder: Path, card: dict[str, Any]) -> None:
    """Raise :class:`ChecksumError` when a file's sha256 differs from the card's (every file
    checked regular and size-capped before it is read)."""
    for fname, expected in card["sha256"].items():
        _regular_file(folder / fname, MAX_WEIGHTS_BYTES)
        found = sha256_file(folder / fname)
        if found != expected:
            raise ChecksumError(f"{folder / fname}: sha256 {found} does not match the card's "
                                f"{expected}; the file is damaged or not this model's")


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """A shipped model by name (see :func:`list_models`) or a pretrained folder: checksums
    verified, weights loaded into the model its config describes (float32, eval mode)."""

    folder = _folder(name_or_path)
    card, cfg = _checked(folder)
    model = build_model(cfg, folder)
    model.load_state_dict(_float32_weights(folder))
    model = model.to(device).eval()
    detector = None
    if (folder / "detector.json").is_file():

        detector = OODDetector.load(folder / "detector.json", model)
    return Pretrained(card.get("name", folder.name), model, cfg, card, folder, detector)


def from_pretrained(path_or_hub_id: str | Path,
                    device: str | torch.device = "cpu") -> Pretrained:
    """:func:`load` from a local folder, a shipped name, or a Hugging Face Hub id
    ("owner/name", downloaded with ``huggingface_hub`` when it is installed)."""
    text = str(path_or_hub_id)
    if Path(text).is_dir() or "/" not in text or text.startswith((".", "/")):
        return load(path_or_hub_id, device)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"{text!r} looks like a Hub id; install huggingface_hub to download "
                          "it, or pass a local folder") from e
    return load(snapshot_download(text), device)


def save_pretrained(run_dir: str | Path, out: str | Path, *, card: dict[str, Any],
                    half: bool = False, which: str = "best") -> Path:
    """Write a run's evaluation weights (EMA) as a pretrained folder in the Hub layout.

    ``card``: the card's fields (name, description, data, training: command, commit,
    cpu_minutes, steps; scores: a list of {metric, split, n_examples, seed, value,
    mc_error}); the sha256 fields are added here. ``half`` stores floating tensors as float16.
    A ``detector.json`` in the run directory is copied. Returns ``out``.
    """

    run_dir, out = Path(run_dir), Path(out)
    tensors, state = load_checkpoint(find_checkpoint(run_dir, which))
    weights = tensors["ema"] if "ema" in tensors else tensors["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    # Written beside `out` and swapped in only once it loads as it will be read: a malformed
    # card or a kill leaves no half-written folder, and no folder that load() refuses.
    with output_lock(out), staged_directory(out, written_by="biva save_pretrained",
                                            earlier=("card.json",)) as stage:
        save_file({k: v.contiguous() for k, v in weights.items()},
                  str(stage / "model.safetensors"))
        shutil.copyfile(run_dir / "config.json", stage / "config.json")
        files = ["model.safetensors", "config.json"]
        detector = run_dir / "ood" / "detector.json"
        if (run_dir / "detector.json").is_file():
            detector = run_dir / "detector.json"
        if detector.is_file():
            shutil.copyfile(detector, stage / "detector.json")
            files.append("detector.json")
        full = {**card, "name": card.get("name", out.name), "step": state.get("step"),
                "dtype": "float16" if half else "float32",
                "sha256": {f: sha256_file(stage / f) for f in files}}
        atomic_write_json(stage / "card.json", full)
        atomic_write_text(stage / "README.md", card_markdown(full))
        load(stage)
    return out


def card_markdown(card: dict[str, Any]) -> str:
    """The card as the README.md of a Hub model page: what it is, how it was made, the
    scores it should give."""
    t = card.get("training", {})
    lines = [f"# {card['name']}", "", card.get("description", ""), "",
             "- data: " + ", ".join(f"{k} {v}" for k, v in card.get("data", {}).items()
                                   if v is not None),
             f"- trained with: `{t.get('command', '?')}` (commit {t.get('commit', '?')}, "
             f"{t.get('cpu_minutes', '?')} CPU-minutes, {t.get('steps', '?')} steps, "
             f"{t.get('date', '?')})",
             f"- weights: {card.get('dtype', 'float32')}, sha256 "
             f"{card['sha256'].get('model.safetensors', '?')}"]
    det = card.get("detector")
    if det:
        at_k = f" at K = {det['n_samples']}" if "n_samples" in det else ""
        lines.append(f"- anomaly detector (detector.json): {det['score']} (the density of "
                     "L_K and LLR^{>k} for k = " + ",".join(map(str, det["k"])) + at_k +
                     "), fitted "
                     f"on {det['fitted_on']}, no anomaly examples; keeps "
                     f"{100 * det['in_tpr']:.0f}% of them")
    if card.get("headline"):
        lines += ["", "Headline figures, with a 95% interval over the images and the Monte "
                  "Carlo draws:", "", "| figure | unit | split | images | value | 95% interval |",
                  "|---|---|---|---|---|---|"]
        for h in card["headline"]:
            lo, hi = h["interval_95"]
            lines.append(f"| {h['metric']} | {h.get('unit', 'nats')} | {h['split']} | "
                         f"{h['n_examples']} ({h['subset']}) | {h['value']:.4f} | "
                         f"[{lo:.4f}, {hi:.4f}] |")
        lines += ["", "What the test suite re-measures (a fixed slice; it must agree within "
                  "its tolerance, from the Monte Carlo error over sampling seeds):"]
    lines += ["", "| score | unit | split | examples | seed | expected | Monte Carlo error |",
              "|---|---|---|---|---|---|---|"]
    for s in card.get("scores", []):
        lines.append(f"| {s['metric']} | {s.get('unit', 'nats')} | {s['split']} | "
                     f"{s['n_examples']} | {s['seed']} | {s['value']:.4f} | "
                     f"{s['mc_error']:.4f} |")
    lines += ["", "Load it with `biva.pretrained.load(...)` or `biva.pretrained."
              "from_pretrained(...)` (the biva library)."]
    return "\n".join(lines) + "\n"


def _current(stamp: dict | None, digests: dict[str, str]) -> bool:
    """Whether a copy's stamp was written from files with these digests (every file the card
    signs, config.json included; stamps that predate ``digests`` are rewritten)."""
    return stamp is not None and stamp.get("digests") == digests


def _stamp(run_dir: Path) -> dict | None:
    """The ``pretrained.json`` materialize wrote in ``run_dir``, or None (missing, not ours)."""
    try:
        stamp = _read_json(run_dir / "pretrained.json")
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("sha256"), str) else None


def materialize(name_or_path: str | Path, run_dir: str | Path | None = None) -> Path:
    """A run directory for a pretrained model (``runs/pretrained/NAME`` by default): its
    config.json and a ``checkpoints/best`` of its weights, so that every command that takes a
    run directory takes it (``--pretrained NAME``). Written once, whole (beside, then swapped
    in), under a lock; rewritten when the card's checksum changes. A directory it did not
    write (no ``pretrained.json`` stamp), such as a user's own run, is never touched."""
    folder = _folder(name_or_path)
    card, cfg = _verified(folder)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / "pretrained" / card["name"]
    digest, digests = card["sha256"]["model.safetensors"], dict(card["sha256"])
    # The meta-device shape check (seconds: its first use imports torch's compiler stack) runs
    # only when the copy is (re)written, and before the lock creates anything; a current copy
    # was checked when it was written, and loading it compares its config with its checkpoint.
    checked = _current(_stamp(run_dir), digests)
    if not checked:
        _check_shapes(cfg, folder)
        checked = True
    with output_lock(run_dir.parent / f"{run_dir.name}.pretrained"):
        stamp = _stamp(run_dir)
        if _current(stamp, digests):
            return run_dir
        if not checked:   # current before the lock, replaced by another process since
            _check_shapes(cfg, folder)
        if stamp is None and (run_dir.exists() or run_dir.is_symlink()):
            raise FileExistsError(
                f"{run_dir} exists and was not written by --pretrained (no pretrained.json): it "
                f"may be a run of yours, so it is left as it is; move it, or load the model in "
                f"Python with biva.pretrained.load({card['name']!r})")
        weights = _float32_weights(folder)
        with atomic_directory(run_dir) as tmp:
            shutil.copyfile(folder / "config.json", tmp / "config.json")
            save_checkpoint(tmp / "checkpoints" / "best", tensors={"ema": weights},
                            state={"step": card.get("step") or 0, "pretrained": card["name"],
                                   "config": to_dict(cfg)})
            if (folder / "detector.json").is_file():
                # At the run's root, not in ood/: `biva ood` on this copy writes its own
                # detector there and never replaces the shipped one.
                shutil.copyfile(folder / "detector.json", tmp / "detector.json")
            atomic_write_json(tmp / "pretrained.json",
                              {"name": card["name"], "sha256": digest, "digests": digests,
                               "from": str(folder)})
    return run_dir
