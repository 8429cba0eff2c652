"""Every shipped config builds, trains a step and evaluates L_K, per variant (the presets:
tests/test_presets.py).

The real channel / stride / latent layout of each config is what runs: only the batch (2 rows),
the number of blocks per stage (1) and the schedule are shrunk (and the width of the two
paper-scale top-down configs, whose presets run at full width). A config that is a preset as
it is runs its own variant; the preset test (test_presets.py) runs the others. Data: the real
files where shared/ has them (a few rows), generated arrays of the dataset's shape and kind
otherwise. Catches, e.g., a top-down skip declared with the wrong channel count (a crash on the
first forward pass of any preset whose filters change between stages).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import replace
from importlib import resources

import pytest
import torch
from shipped import FAST_LATENT_KERNEL, family_pairs

from biva import importance_weighted_bound
from biva.config import TOPDOWN_VARIANTS, load_run_config
from biva.config.run import shipped_configs
from biva.data import DatasetSplits, ImageSplit, load_run_data, to_model_input
from biva.experiments.ablation import ablation_model, ablation_train
from biva.training.semi_supervised import trainer_class
from biva.utils.config_io import load_config_file

SMALL = ["train.batch_size=2", "train.steps=1", "train.finetune_steps=0",
         "train.init_batch=4", "train.eval_every=1", "train.eval_batches=1",
         "train.log_every=1", "train.progress=false",
         "train.threads=1", "eval.batch_size=2", "eval.n_samples=3", "train.checkpoint_every=1000"]
REAL = ("digits", "binarized_mnist", "mnist", "fashion_mnist")
ROWS = 24  # training rows kept: >= the labelled rows (1 per class) + a batch


def _small(variant: str) -> list[str]:
    """SMALL, with one gated block a stage for the BIVA family (a top-down model has no
    ``model.blocks``: its depth is its spec)."""
    return SMALL if variant in TOPDOWN_VARIANTS else ["model.blocks=1", *SMALL]


def _take(split: ImageSplit, n: int) -> ImageSplit:
    """The first n rows, but covering every class when the split is labelled."""
    if split.labels is None:
        return split.subset(torch.arange(min(n, len(split))))
    first = [int((split.labels == c).nonzero()[0]) for c in split.labels.unique()]
    rest = [i for i in range(len(split)) if i not in set(first)][:max(0, n - len(first))]
    return split.subset(torch.tensor(sorted(first + rest)))


@functools.cache
def _real(name: str, root: str, binarization: str | None) -> DatasetSplits:
    cfg = load_run_config(None, [f"data.name={name}", f"data.root={root}"]
                          + ([f"data.binarization={binarization}"] if binarization else []))
    d = load_run_data(cfg)
    return DatasetSplits(d.name, _take(d.train, ROWS), _take(d.valid, 4), _take(d.test, 4),
                         d.kind, d.binarization, d.num_classes, d.class_names)


def _generated(cfg) -> DatasetSplits:
    """Arrays of the config's image shape and data kind (8-bit for natural images)."""
    g = torch.Generator().manual_seed(0)
    shape = tuple(cfg.model.input_shape)
    binary = cfg.model.likelihood == "bernoulli"

    def split(n: int) -> ImageSplit:
        images = (torch.rand((n, *shape), generator=g) if binary
                  else torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8))
        return ImageSplit(images, torch.arange(n) % 10)

    return DatasetSplits(cfg.data.name, split(ROWS), split(4), split(4),
                         "binary" if binary else "8bit", "dynamic" if binary else None, 10)


def _data(cfg, root) -> DatasetSplits:
    if cfg.data.name in REAL and root is not None:
        return _real(cfg.data.name, str(root), cfg.data.binarization)
    return _generated(cfg)


@pytest.fixture(autouse=True)
def no_memory_precheck(monkeypatch):
    """The trainer's "will a step fit?" forward on the meta device (1-2 s a paper-scale
    config) cannot fail a case here: a failed pass falls back to the parameter count, and the
    machine has room for every model at batch 2. It is tested on its own (a model too big for
    the machine, tests/test_training.py); here it is skipped as its message says users can,
    and what could fail in it, the model built on the meta device, is checked in every case
    (:func:`_train_step_and_bound`)."""
    monkeypatch.setenv("BIVA_SKIP_MEMORY_CHECK", "1")


@pytest.fixture(autouse=True)
def drop_the_run(tmp_path):
    """Each case's run (a paper-scale checkpoint: up to 750 MB) is removed after the case, so
    the file's 44 cases do not hold 14 GB of disk until the session ends (the failure report
    says what went wrong; the run itself is rebuilt by rerunning the case)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def data_root():
    import os
    from pathlib import Path

    env = os.environ.get("BIVA_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def _plain_preset(name: str) -> bool:
    """The config's model is a named preset as it is (test_preset_builds_trains_and_evaluates_l_k
    runs that model for every variant at its real width)."""
    return set(load_config_file(resources.files("biva") / "configs" / f"{name}.yaml")
               .get("model", {})) == {"preset"}


def _config_pairs() -> list[tuple[str, str]]:
    """(config, variant): every variant of the BIVA family where the config adds something
    per variant (a semi-supervised model, or a model of its own); otherwise the config's own
    variant, the preset test covering the others."""
    out = []
    for name in shipped_configs():
        cfg = load_run_config(name, [])
        if cfg.data.labels_per_class > 0 or not _plain_preset(name):
            out += family_pairs([name], lambda n, v=cfg.model.variant: v)
        else:
            out.append((name, cfg.model.variant))
    return out


@pytest.mark.parametrize(("name", "variant"), _config_pairs())
@pytest.mark.slow
def test_shipped_config_trains_a_step_and_evaluates_l_k(name, variant, data_root, tmp_path):
    overrides = [*_small(variant), f"model.variant={variant}"]
    cfg = load_run_config(name, overrides)
    if cfg.model.topdown and _plain_preset(name):
        # The paper-scale top-down presets run at their real width in the preset test;
        # here what the config adds (data, schedule, spectral regularization) is checked.
        cfg.model = replace(cfg.model, filters=(16,))
    _train_step_and_bound(cfg, data_root, tmp_path)


def _topdown_equivalent_configs() -> list[str]:
    """Unsupervised BIVA-family configs; the 32x32 and 64x64 paper-scale ones (96-128 filters,
    x3 for VDVAE) only repeat the derivation at a larger width, and cost most of a minute."""
    out = []
    for n in shipped_configs():
        cfg = load_run_config(n, [])
        if (not cfg.model.topdown and cfg.data.labels_per_class <= 0
                and max(cfg.model.filters) <= 64):
            out.append(n)
    return out


@pytest.mark.parametrize("family", TOPDOWN_VARIANTS)
@pytest.mark.parametrize("name", _topdown_equivalent_configs())
def test_topdown_equivalent_of_each_shipped_config_trains_a_step(name, family, data_root,
                                                                 tmp_path):
    """What ``biva ablation --variants vdvae,nvae`` trains from each unsupervised config."""
    cfg = load_run_config(name, _small("biva"))
    cfg.model = ablation_model(cfg.model, family)
    cfg.train = ablation_train(cfg.train, family)
    cfg.validate()
    assert cfg.model.variant == family and (cfg.train.spectral_reg > 0) == (family == "nvae")
    _train_step_and_bound(cfg, data_root, tmp_path)


def _train_step_and_bound(cfg, data_root, tmp_path) -> None:
    if not cfg.model.topdown and cfg.model.latent_type == "conv":
        cfg.model = replace(cfg.model, latent_kernel=FAST_LATENT_KERNEL)
    if cfg.data.labels_per_class > 0:
        cfg.data = replace(cfg.data, labels_per_class=1, labelled_batch_size=2)
    cfg.validate()
    data = _data(cfg, data_root)
    torch.manual_seed(0)
    trainer = trainer_class(cfg)(cfg, tmp_path / "run", data=data)
    with torch.device("meta"):      # what the skipped memory check builds first
        assert all(p.is_meta for p in trainer._build_model().parameters())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert trainer.step == 1
    changed = sum(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(),
                                                         strict=True))
    assert changed > 0.5 * len(before), "the step left most parameters untouched"
    images = data.test.images[:2]
    if images.is_floating_point():  # a dynamically binarized dataset: one fixed draw
        images = torch.bernoulli(images, generator=torch.Generator().manual_seed(0)).byte()
    x = to_model_input(images, data.kind, cfg.model.bits)
    lk = importance_weighted_bound(trainer.ema.model, x, 3)
    assert lk.shape == (2,) and torch.isfinite(lk).all()
    # Images of this size cannot have a positive log-likelihood for discrete data.
    assert (lk <= 0).all()


