"""Training on one's own images: `biva train --data PATH` infers shape, likelihood and split.

Which bugs these catch: a grey or RGBA folder read with the wrong channel count or likelihood;
a held-out part that keeps the folder's class order (every "first N" one class) or whose file
list is not written; 16-bit PNGs clipped to white; a CPU config that skips its first updates
or does not learn; `--data` resolving a config different from the explicit one.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biva.cli.main import main
from biva.config import load_run_config
from biva.data import load_dataset
from biva.data.errors import DatasetError
from biva.data.formats import read_images
from biva.training import Trainer
from biva.training.own_data import config_for_data
from biva.utils.config_io import load_config_file


def _folder(root: Path, mode: str, n_per_class: int = 12, size: int = 32) -> Path:
    """Class folders a/ b/ c/ of random images in PIL ``mode``."""
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode).save(
                root / c / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 3)])
def test_folder_infers_shape_and_likelihood(tmp_path, mode, channels):
    """Grey -> 1 channel, RGB -> 3, RGBA -> 3 (alpha dropped); 8-bit -> discretized logistic;
    and the CPU config trains a step on it (a likelihood that cannot take 1 channel fails)."""
    cfg, data, lines = config_for_data(_folder(tmp_path / "imgs", mode), overrides=[
        "train.steps=1", "train.batch_size=8", "train.eval_every=1", "train.progress=false",
        "train.threads=1"])
    assert tuple(cfg.model.input_shape) == (channels, 32, 32) == data.shape
    assert cfg.model.likelihood == "discretized_logistic"
    assert cfg.name == "natural32_cpu" and cfg.data.name == "folder"
    assert any("3 classes" in line for line in lines)
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    trainer.fit()
    assert trainer.step == 1 and math.isfinite(trainer.best)


def test_bilevel_folder_gets_a_bernoulli_likelihood(tmp_path):
    root = tmp_path / "bw"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8) * 255).convert("1").save(
            root / f"{i}.png")
    cfg, data, _ = config_for_data(root)
    assert cfg.model.likelihood == "bernoulli" and data.kind == "binary"
    assert tuple(cfg.model.input_shape) == (1, 32, 32)


def test_other_sizes_name_the_option_and_resize(tmp_path):
    root = _folder(tmp_path / "imgs", "RGB", size=28)
    with pytest.raises(ValueError, match="--image-size"):
        config_for_data(root)
    cfg, data, _ = config_for_data(root, image_size=64)
    assert data.shape == (3, 64, 64) and cfg.name == "natural64_cpu"
    assert cfg.data.image_size == 64


def test_held_out_part_is_shuffled_across_classes_and_listed(tmp_path):
    """The folder is sorted by class; its held-out parts must not be (first N = a random
    sample), and train / valid / test must partition the files."""
    root = _folder(tmp_path / "imgs", "RGB", n_per_class=40)
    data = load_dataset("folder", path=root, seed=3)
    test_classes = [s.split("/")[0] for s in data.test.sources]
    assert len(set(test_classes[:6])) > 1, "the first held-out images are all one class"
    assert test_classes != sorted(test_classes)
    # Labels and sources travel together through the carve.
    assert [("abc"[int(y)]) for y in data.test.labels] == test_classes
    files = data.train.sources + data.valid.sources + data.test.sources
    assert sorted(files) == sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    # The trainer writes the lists.
    cfg = load_run_config("natural32_cpu", [f"data.path={root}", "train.steps=1",
                                            "train.progress=false"])
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    split = json.loads((trainer.run_dir / "data_split.json").read_text())
    assert split["test"] == list(data.test.sources) and split["n_valid"] == len(data.valid)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG holds 0..65535; clipping to 8 bits would make it all white."""
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, 0)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # Pillow reads it as a 16-bit (or 32-bit) grey image
    out = read_images([path])
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0].tolist() == [0, 1, 128, 255]


def test_images_of_mixed_sizes_name_the_option(tmp_path):
    root = _folder(tmp_path / "imgs", "RGB", n_per_class=2)
    Image.new("RGB", (40, 40)).save(root / "a" / "big.png")
    with pytest.raises(DatasetError, match="--image-size"):
        load_dataset("folder", path=root)


@pytest.fixture(scope="module")
def few_photos(shared_data_dir, tmp_path_factory) -> Path:
    """8 real photos a class from photos32 (80 in all)."""
    src = shared_data_dir / "photos32"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    dst = tmp_path_factory.mktemp("photos") / "photos"
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:8]:
            shutil.copy(f, dst / d.name / f.name)
    return dst


@pytest.mark.slow
@pytest.mark.extended
def test_cpu_config_learns_on_photos_without_skipping(few_photos, tmp_path):
    """natural32_cpu on real photos, its own schedule: 240 steps (the 200-step warm-up, where
    gradient norms grow ~50x, then 40 with the auto skip threshold armed) skip nothing and
    the training loss falls."""
    cfg, data, _ = config_for_data(few_photos, overrides=[
        "train.steps=240", "train.batch_size=8", "train.log_every=10",
        "train.eval_every=1000", "train.checkpoint_every=1000", "train.progress=false",
        "train.threads=1"])
    trainer = Trainer(cfg, tmp_path / "run", data=data)
    trainer.fit()
    assert math.isfinite(trainer.guard.threshold(trainer.step))
    records = [json.loads(line) for line in trainer.run.metrics_path.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert trainer.guard.skipped == 0 and train[-1]["skipped_total"] == 0
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]


@pytest.mark.slow
def test_data_flag_resolves_the_same_config_as_an_explicit_one(few_photos, tmp_path):
    common = ["--steps", "1", "--no-progress", "--threads", "1", "--set", "train.eval_every=1",
              "--set", "train.eval_batches=1"]
    assert main(["train", "--data", str(few_photos), "--run-dir", str(tmp_path / "a"),
                 *common]) == 0
    assert main(["train", "--config", "natural32_cpu", "--run-dir", str(tmp_path / "b"),
                 "--set", "data.name=folder", "--set", f"data.path={few_photos.resolve()}",
                 "--set", "model.input_shape=[3,32,32]",
                 "--set", "model.likelihood=discretized_logistic", *common]) == 0
    a, b = (load_config_file(tmp_path / r / "config.json") for r in "ab")
    assert a == b
    assert (tmp_path / "a" / "data_split.json").is_file()
    assert list((tmp_path / "a" / "checkpoints").glob("*"))


def _class_folder(root: Path, n: int = 4) -> Path:
    """root/a and root/b with n small grey PNGs each."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), color=30 * i).save(root / c / f"{i}.png")
    return root


def _refused_before_a_run_dir(folder: Path, tmp_path: Path, capsys) -> str:
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--image-size", "8", "--config", "digits",
                 "--run-dir", str(run), "--steps", "1", "--set", "train.finetune_steps=0",
                 "--set", "train.batch_size=2",
                 "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert not run.exists(), "a run directory was made before the data were refused"
    return err[0]


@pytest.mark.parametrize("side", [20000, 10000])
def test_an_image_too_large_is_refused_by_name_before_decoding(tmp_path, capsys, side):
    """20000 x 20000 was PIL's DecompressionBombError as a traceback; 10000 x 10000 was used
    silently (1 bit a pixel here, so the test files stay small)."""
    folder = _class_folder(tmp_path / "imgs")
    big = folder / "b" / "huge.png"
    Image.new("1", (side, side)).save(big)
    line = _refused_before_a_run_dir(folder, tmp_path, capsys)
    assert str(big) in line and "the largest accepted has 50,000,000" in line, line


def test_a_file_name_that_is_not_utf8_is_refused_by_name(tmp_path, capsys):
    """It failed while writing data_split.json with a codec message, leaving a half-made run
    directory."""
    import os

    folder = _class_folder(tmp_path / "imgs")
    good = (folder / "a" / "0.png").read_bytes()
    with open(os.path.join(os.fsencode(folder / "a"), b"caf\xe9.png"), "wb") as f:
        f.write(good)
    line = _refused_before_a_run_dir(folder, tmp_path, capsys)
    assert "b'caf\\xe9.png' is not valid UTF-8" in line and str(folder / "a") in line, line


def test_a_folder_link_loop_is_named_not_called_a_mixed_layout(tmp_path, capsys):
    folder = _class_folder(tmp_path / "imgs")
    (folder / "self").symlink_to(".")
    line = _refused_before_a_run_dir(folder, tmp_path, capsys)
    assert str(folder / "self") in line and "loop" in line and "mixed" not in line, line
