"""Shipped pretrained models: every card's scores re-measured on its seeded slice of the real
test data, checksums, the Hub-layout round trip, ``--pretrained`` and reading a folder."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from biva import pretrained
from biva.cli.main import main
from biva.pretrained import (
    ChecksumError,
    from_pretrained,
    list_models,
    load,
    measure,
    read_folder,
    save_pretrained,
)

SHIPPED = list_models()
MAX_BYTES = 25_000_000


def test_at_least_the_demo_model_ships_and_all_fit_the_size_budget():
    assert "digits" in SHIPPED
    from biva.pretrained import _shipped_root

    total = sum(f.stat().st_size for name in SHIPPED for f in (_shipped_root() / name).iterdir())
    assert total <= MAX_BYTES, f"{total / 1e6:.1f} MB of checkpoints, over 25 MB"


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.slow
def test_every_card_score_is_what_the_checkpoint_gives(name, monkeypatch):
    """The card's seed-0 value on its slice, within its stated Monte Carlo error: a wrong
    checkpoint, a changed bound or a changed data split fails."""
    monkeypatch.chdir("/")  # data from the config's root or BIVA_DATA_DIR, not the cwd
    p = load(name)
    card = p.card
    for key in ("data", "training", "scores", "sha256", "dtype"):
        assert key in card, key
    for key in ("command", "commit", "cpu_minutes", "steps", "date"):
        assert key in card["training"], key
    assert card["scores"], "a card with no score to check"
    torch.set_num_threads(1)
    for s in card["scores"]:
        got = measure(p, s["metric"], split=s["split"], n_examples=s["n_examples"],
                      seed=s["seed"])
        tol = s["mc_error"] + 1e-3 * abs(s["value"])
        assert abs(got - s["value"]) <= tol, (
            f"{name} {s['metric']}: measured {got:.4f}, card {s['value']:.4f} +- {tol:.4f}")


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    src = load("digits").path
    dst = tmp_path / "digits"
    shutil.copytree(src, dst)
    blob = bytearray((dst / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (dst / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match=r"model.safetensors: sha256 .* does not match"):
        load(dst)


def test_missing_files_and_unknown_names_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a shipped name"):
        load("no-such-model")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json, model.safetensors"):
        load(tmp_path / "x")


def test_hub_ids_need_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="install huggingface_hub"):
        from_pretrained("someone/biva-model")


def test_save_and_from_pretrained_round_trip_in_the_hub_layout(tmp_path):
    from biva.runs.loading import load_trained

    run = tmp_path / "run"
    assert main(["train", "--config", "digits", "--run-dir", str(run), "--steps", "4",
                 "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2",
                 "--set", "train.log_every=2", "--set", "train.finetune_steps=0",
                 "--set", "model.filters=[8]", "--set", "model.blocks=1",
                 "--threads", "1", "--no-progress"]) == 0
    card = {"name": "tiny", "description": "a test", "data": {"name": "digits"},
            "training": {"command": "biva train ...", "commit": "x", "cpu_minutes": 0.1,
                         "steps": 4, "date": "2026-12-02"}, "scores": []}
    out = save_pretrained(run, tmp_path / "hub", card=card)
    assert {"config.json", "model.safetensors", "README.md", "card.json"} <= {
        f.name for f in out.iterdir()}
    assert "# tiny" in (out / "README.md").read_text()
    p = from_pretrained(out)
    ref, _, _ = load_trained(run)
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.4))
    torch.manual_seed(0)
    a = p.model(x).log_weight
    torch.manual_seed(0)
    b = ref(x).log_weight
    torch.testing.assert_close(a, b)
    # A card load() would refuse, or one the README cannot be written from: nothing is left
    # behind, and a folder saved before stays as it was (issue 41: half-written folders).
    saved = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ValueError, match="name '../x'"):
        save_pretrained(run, tmp_path / "bad", card={**card, "name": "../x"})
    assert not (tmp_path / "bad").exists()
    with pytest.raises((TypeError, KeyError, ValueError)):
        save_pretrained(run, out, card={**card, "scores": ["not a score"]})
    assert {f.name: f.read_bytes() for f in out.iterdir()} == saved
    half = from_pretrained(save_pretrained(run, tmp_path / "hub16", card=card, half=True))
    assert json.loads((tmp_path / "hub16" / "card.json").read_text())["dtype"] == "float16"
    assert all(t.dtype == torch.float32 for t in half.model.state_dict().values()
               if t.is_floating_point())


def test_commands_take_a_pretrained_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--pretrained", "digits", "--samples", "3", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "pretrained" / "digits" / "eval_test_k3.json").is_file()
    assert main(["sample", "--pretrained", "digits", "-n", "4"]) == 0
    assert main(["evaluate", "runs/x", "--pretrained", "digits"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "a run directory is needed (or --pretrained NAME)" in capsys.readouterr().err


def test_read_folder_gives_the_models_input(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    p = load("digits")
    x = read_folder(tmp_path, p.config)
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 8, 8)
    assert set(x.unique().tolist()) <= {0, 1}          # a binary model: drawn to {0, 1}
    torch.testing.assert_close(read_folder(tmp_path, p.config), x)   # a fixed draw
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        read_folder(tmp_path / "empty", p.config)


def test_the_shipped_classifier_reads_raw_digits_and_the_cli_agrees(shared_data_dir, tmp_path,
                                                                    monkeypatch, capsys):
    """mnist-100-labels classifies raw grey MNIST test images (uint8 0..255, drawn to {0, 1}
    once) through ``Pretrained.predict``; ``biva predict --pretrained`` gives the same error on
    the same images; a model without a classifier says so instead of returning nonsense."""
    from biva.data.formats import read_idx

    torch.set_num_threads(1)
    p = load("mnist-100-labels")
    assert p.is_classifier
    n = 300
    images = read_idx(shared_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", (28, 28))[:n]
    labels = torch.from_numpy(read_idx(shared_data_dir / "mnist" /
                                       "t10k-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    probs = p.predict_proba(images)
    assert probs.shape == (n, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(n))
    pred = p.predict(images)
    torch.testing.assert_close(pred, probs.argmax(1))
    error = float((pred != labels).float().mean())
    assert error < 0.10, f"{error:.3f} of {n} real test digits misclassified"
    # Wrongly shaped input is named, not broadcast.
    with pytest.raises(ValueError, match=r"expected \(N, 1, 28, 28\)"):
        p.predict(images[:, :20])
    np.savez(tmp_path / "digits.npz", images=images, labels=labels.numpy())
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--pretrained", "mnist-100-labels", "--npz",
                 str(tmp_path / "digits.npz"), "--out", str(tmp_path / "pred.json"),
                 "--threads", "1"]) == 0
    # The file holds every prediction (the same error, exactly); the console, read by people,
    # the error rounded to 4 decimals.
    saved = json.loads((tmp_path / "pred.json").read_text())
    assert float(np.mean(np.array(saved["pred"]) != labels.numpy())) == pytest.approx(error)
    assert json.loads(capsys.readouterr().out.split("written")[0])["error"] == round(error, 4)
    digits = load("digits")
    assert not digits.is_classifier
    with pytest.raises(ValueError, match="digits: not a classifier .*mnist-100-labels"):
        digits.predict(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="metric 'error' needs a classifier"):
        measure(digits, "error")


@pytest.mark.parametrize("kwargs, name", [({"batch_size": -3}, "batch_size"),
                                          ({"batch_size": 0}, "batch_size"),
                                          ({"n_samples": 0}, "n_samples"),
                                          ({"n_samples": -2}, "n_samples")])
def test_python_predict_refuses_a_count_below_one(kwargs, name):
    # `biva predict --batch-size -3` wrote an empty file with exit 0; the Python route
    # checked nothing (issue 41). Both go through predict_proba, which now refuses.
    p = pretrained.load("mnist-100-labels")
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=f"{name}: expected an integer >= 1"):
        p.predict_proba(images, **kwargs)


def test_raw_grey_levels_are_drawn_on_with_probability_level_over_255(tmp_path):
    """The raw-image route, pinned by what it must produce: through a folder of PNGs
    (read_folder) and from an array, a grey level v turns a pixel on with probability
    v / 255 (0 never, 255 always); {0, 1} images pass as they are. Catches a reader or a
    converter that thresholds (every non-zero level -> 1) or rescales twice."""
    from PIL import Image

    from biva.evaluation.classification import images_to_model_input
    from biva.pretrained import read_folder

    levels = (0, 51, 128, 204, 255)
    folder = tmp_path / "grey"
    folder.mkdir()
    for i, v in enumerate(levels):
        for j in range(8):
            Image.fromarray(np.full((28, 28), v, np.uint8)).save(folder / f"{i}_{j}.png")
    cfg = load("mnist-100-labels").config                  # a binary-image model, 28x28
    images = read_folder(folder, cfg, seed=0)
    x = images_to_model_input(images, "binary", 8, (1, 28, 28), seed=0)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    order = sorted(p.name for p in folder.iterdir())
    for v in levels:
        rows = [k for k, name in enumerate(order) if name.startswith(f"{levels.index(v)}_")]
        on = float(x[rows].mean())
        n = len(rows) * 28 * 28
        p = v / 255
        assert abs(on - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (v, on)
    # The same rule as an array route: the folder's images are the array's draw.
    grey = np.stack([np.full((28, 28), levels[int(name[0])], np.uint8) for name in order])
    assert torch.equal(images_to_model_input(grey, "binary", 8, (1, 28, 28), seed=0), x)
    binary = (np.arange(2 * 28 * 28).reshape(2, 28, 28) % 2).astype(np.uint8)
    assert torch.equal(images_to_model_input(binary, "binary", 8, (1, 28, 28))[:, 0],
                       torch.from_numpy(binary).float())


def test_raw_digits_and_the_dataset_route_see_the_same_binary_images(shared_data_dir, tmp_path,
                                                                      monkeypatch):
    """One binarization rule: the i-th raw MNIST test digit (uint8) gets the very draw that the
    i-th digit of the evaluated split gets with the same seed, so Pretrained.predict on raw
    digits and `biva predict --data mnist` (the split drawn at the run's train seed) give the
    same error on the same 500 digits (they differed by 2 points before)."""
    from biva.data import evaluation_split, load_dataset
    from biva.data.formats import read_idx
    from biva.evaluation.classification import images_to_model_input

    torch.set_num_threads(1)
    p = load("mnist-100-labels")
    seed = p.config.train.seed
    raw = read_idx(shared_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", (28, 28))[:500]
    data = load_dataset("mnist", shared_data_dir, binarization="dynamic")
    split = evaluation_split(data, "test", seed=seed)
    x = images_to_model_input(raw, "binary", 8, (1, 28, 28), seed=seed)
    assert torch.equal(x, split.images[:500].float())
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--pretrained", "mnist-100-labels", "--data", "mnist",
                 "--n-examples", "500", "--data-root", str(shared_data_dir), "--seed",
                 str(seed), "--out", str(tmp_path / "pred.json"), "--threads", "1"]) == 0
    saved = json.loads((tmp_path / "pred.json").read_text())
    labels = data.test.labels[:500].numpy()
    cli_error = float(np.mean(np.array(saved["pred"]) != labels))
    error = float((p.predict(raw, seed=seed).numpy() != labels).mean())
    assert error == pytest.approx(cli_error, abs=1e-12)


def test_one_return_convention_tensors_from_models_numpy_from_the_detector(tmp_path):
    """The documented convention (architecture guide, "What functions return"): read_folder
    and the classifier give torch tensors; the scikit-learn style detector NumPy arrays."""
    from PIL import Image

    photos = load("photos32")
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    images = read_folder(tmp_path, photos.config)
    assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    for method in ("predict", "decision_function", "score_samples", "anomaly_score"):
        assert isinstance(getattr(photos.detector, method)(images), np.ndarray), method
    digits = load("mnist-100-labels")
    raw = np.zeros((2, 28, 28), np.uint8)
    assert isinstance(digits.predict(raw), torch.Tensor)
    assert isinstance(digits.predict_proba(raw), torch.Tensor)
