"""Semi-supervised BIVA (appendix F): the exact sum over classes, learning, the label split,
resume, and the CLI (train -> evaluate -> predict -> sample).

Everything uses a tiny model (8 filters, 1 block) on scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import digits_config

from biva import HierarchicalVAE, preset
from biva.cli.main import main
from biva.config import load_run_config
from biva.data import fixed_binarization, load_dataset, load_run_data, to_model_input
from biva.models.semi_supervised import SemiSupervisedBIVA, default_alpha
from biva.nn.gaussian import DiagonalGaussian
from biva.objectives.classification import (
    evaluate_classification,
    generative_posterior,
    generative_summary,
    predict_proba,
)
from biva.objectives.training import semi_supervised_loss
from biva.runs.predict import predict
from biva.training.semi_supervised import SemiSupervisedTrainer, trainer_class
from biva.utils.checkpoint import load_checkpoint

# The tiny run of tests/tiny.py (tiny.BASE), and this file's own intervals and sizes.
TINY = ["train.log_every=2", "train.eval_every=4", "train.checkpoint_every=2",
        "train.batch_size=24", "eval.n_samples=2", "eval.batch_size=40",
        "data.labels_per_class=3", "data.labelled_batch_size=10", "train.finetune_steps=0"]


def tiny_config(*extra: str, steps: int = 4):
    return digits_config(*TINY, *extra, steps=steps)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def tiny_model(variant: str = "biva", seed: int = 0, **kw) -> SemiSupervisedBIVA:
    torch.manual_seed(seed)
    cfg = preset("digits", variant=variant, filters=(8,), blocks=1, dropout_q=0.0,
                 dropout_p=0.0, **kw)
    return SemiSupervisedBIVA(cfg, 10, alpha=3.0)


def initialized_model(digits, n: int) -> tuple[SemiSupervisedBIVA, torch.Tensor]:
    """A tiny BIVA initialized on the first n digits (fixed binarization), in eval mode."""
    model = tiny_model("biva")
    x = to_model_input(fixed_binarization(digits.train, 0).images[:n], "binary")
    model.initialize(x)
    return model.eval(), x


def mixed_hierarchy(latent_type: str = "conv", **kw):
    """An RGB hierarchy whose three stages all differ: filters 4/6/8, kernels 3/5/3."""
    from biva.config import ModelConfig

    return ModelConfig(variant="biva", input_shape=(3, 8, 8), likelihood="discretized_logistic",
                       latents=(6, 4, 2), latent_type=latent_type, filters=(4, 6, 8),
                       kernels=(3, 5, 3), strides=(2, 1, 2), blocks=1, n_mix=2, **kw)


# Natural-image flavour: RGB 8-bit data, discretized logistic mixture, convolutional latents.
NATURAL = {"input_shape": (3, 8, 8), "likelihood": "discretized_logistic", "n_mix": 2,
           "latent_type": "conv", "latent_kernel": 1}


def hashed_sample(self: DiagonalGaussian, temperature: float = 1.0, noise=None):
    # Noise that is a fixed, smooth function of the row's own mean: any two passes that reach
    # the same distribution draw the same z whatever the batch layout (batched vs looped over
    # classes), and float rounding in mu is not amplified.
    eps = torch.sin(3.0 * self.mu + 1.3) * 1.5 if noise is None else noise
    return self.mu + (temperature * self.sigma) * eps


@pytest.mark.parametrize("variant,natural", [("biva", False), ("lvae", False), ("biva", True)])
def test_unlabelled_bound_is_the_exact_sum_over_classes(monkeypatch, digits, variant, natural):
    if natural:
        model = tiny_model(variant, **NATURAL)
        x = to_model_input(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8), "8bit")
    else:
        model = tiny_model(variant)
        x = to_model_input(fixed_binarization(digits.train, 0).images[:12], "binary")
    model.initialize(x)
    model.eval()
    monkeypatch.setattr(DiagonalGaussian, "sample", hashed_sample)
    calls = {"bu": 0, "td": 0}
    bu = model._bottom_up

    def count_bu(*a, **k):
        calls["bu"] += 1
        return bu(*a, **k)

    def count_td(*_):
        calls["td"] += 1

    monkeypatch.setattr(model, "_bottom_up", count_bu)
    # A TD pass ends in TD layer 0, the one below z_1.
    hook = model.td_layers[0].register_forward_hook(count_td)
    out = model(x)
    assert calls == {"bu": 1, "td": 1}  # batched over classes, one BU pass reused
    monkeypatch.setattr(model, "_bottom_up", bu)
    hook.remove()

    # Brute force: one plain hierarchy pass per class, y fed through the td_context hook.
    log_q = F.log_softmax(model.classify_logits(x), 1)
    per_class = []
    for c in range(10):
        ctx = model.class_context(torch.full((12,), c))
        lw = HierarchicalVAE.forward(model, x, td_context=ctx).log_weight
        per_class.append(lw - math.log(10))                     # L(x, y=c) incl. log p(y)
    L = torch.stack(per_class, 1)
    u = (log_q.exp() * (L - log_q)).sum(1)                      # -U, eq. 19
    torch.testing.assert_close(out.class_bounds, L, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.bound, u, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.log_weight, torch.logsumexp(L, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.loss, -u.mean(), rtol=1e-5, atol=1e-4)

    # A mixed batch: labelled rows get L(x, y) and alpha * CE, unlabelled rows -U (eq. 20).
    y = torch.tensor([3, 1, 4, 1, 5, 9] + [-1] * 6)
    mixed = model(x, labels=y)
    lab = torch.arange(6)
    L_l = L[lab, y[:6]]
    ce = -log_q[lab, y[:6]]
    torch.testing.assert_close(mixed.bound[:6], L_l, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mixed.bound[6:], u[6:], rtol=1e-5, atol=1e-4)
    expected = (-L_l + 3.0 * ce).mean() - u[6:].mean()
    torch.testing.assert_close(mixed.loss, expected, rtol=1e-5, atol=1e-4)
    # Exactly one unlabelled row, in the middle: still summed over all 10 classes.
    y1 = torch.tensor([3, 1, 4, 1, 5, -1, 2, 6, 5, 3, 5, 8])
    one = model(x, labels=y1)
    lab1 = torch.nonzero(y1 >= 0).flatten()
    torch.testing.assert_close(one.bound[lab1], L[lab1, y1[lab1]], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(one.bound[5], u[5], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(one.class_bounds, L[5:6], rtol=1e-5, atol=1e-4)


def test_td_context_is_additive_and_none_keeps_the_plain_model(digits):
    cfg = preset("digits", filters=(8,), blocks=1)
    model = HierarchicalVAE(cfg)
    x = to_model_input(fixed_binarization(digits.test, 0).images[:8], "binary")
    model.initialize(x)
    zeros = [torch.zeros(1, 1, 1, 1)] * model.n_layers
    torch.manual_seed(1)
    a = model(x, td_context=None).log_weight
    torch.manual_seed(1)
    b = model(x, td_context=zeros).log_weight
    torch.manual_seed(1)
    c = model(x).log_weight
    assert torch.equal(a, b) and torch.equal(a, c)


def test_class_conditional_samples_differ_by_class():
    model = tiny_model()
    model.initialize(torch.bernoulli(torch.rand(32, 1, 8, 8)))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    grid = model.class_grid(3, generator=gen())
    assert grid.shape == (30, 1, 8, 8)
    same_noise = [model.sample(1, generator=gen(), y=c) for c in (0, 7)]
    assert not torch.equal(*same_noise)
    assert torch.equal(model.sample(1, generator=gen(), y=7), same_noise[1])


@pytest.mark.slow
def test_classifier_learns_digits_when_every_label_is_known(digits):
    torch.manual_seed(0)
    cfg = preset("digits", filters=(16,), blocks=1)
    model = SemiSupervisedBIVA(cfg, 10, alpha=default_alpha(1, 1))
    train = fixed_binarization(digits.train, 0)
    test = fixed_binarization(digits.test, 0)
    x_all = to_model_input(train.images, "binary")
    model.initialize(x_all[:256])
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ces = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(train), (64,), generator=gen)
        out = model.loss(x_all[idx], train.labels[idx])
        opt.zero_grad()
        semi_supervised_loss(model, out, free_bits=0.5).backward()
        opt.step()
        ces.append(float(out.ce.detach().mean()))
    assert np.mean(ces[-10:]) < 0.6 * np.mean(ces[:10])
    probs = predict_proba(model, to_model_input(test.images, "binary"), seed=0)
    acc = float((probs.argmax(1) == test.labels).float().mean())
    print(f"CE {np.mean(ces[:10]):.3f} -> {np.mean(ces[-10:]):.3f}, test accuracy {acc:.3f}")
    assert acc > 0.5, acc    # chance is 0.1
    # The generative model learned the classes too: p(y | x) ∝ exp L(x, y) names them (the
    # rows of class_bounds must line up with the images and the classes for this to hold).
    gen = evaluate_classification(model, test, "binary", 1)["generative_k1"]
    assert gen["error"] < 0.6 and gen["agreement_with_q"] > 0.4, gen   # chance: 0.9, 0.1


def test_generative_posterior_and_summary_by_hand():
    """p(y|x) ∝ mean_k exp L_k(x, y): K = 2 draws of 3 classes with mean weights (2, 1, 2)."""
    cb = torch.tensor([[[0.0, 0.0, math.log(2)]], [[math.log(3), 0.0, math.log(2)]]])
    log_p = generative_posterior(cb)
    torch.testing.assert_close(log_p.exp(), torch.tensor([[0.4, 0.2, 0.4]], dtype=torch.float64))
    # Two images: one the generative model is sure of (class 1), one it is not (uniform).
    log_p = torch.log(torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    q = torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    s = generative_summary(log_p, q, torch.tensor([1, 2]))
    assert s["error"] == 0.5 and s["agreement_with_q"] == 1.0   # argmax of a tie: class 0
    assert s["class_information_nats"] == pytest.approx(math.log(3) / 2)


def test_label_split_through_the_trainer_is_balanced_seeded_and_disjoint(tmp_path, digits):
    cfg = tiny_config()
    assert trainer_class(cfg) is SemiSupervisedTrainer
    t = SemiSupervisedTrainer(cfg, tmp_path / "a", data=digits)
    lab, unl = t.labelled_indices, t.unlabelled_indices
    n = len(digits.train)
    assert torch.bincount(t.labelled.labels, minlength=10).tolist() == [3] * 10
    assert len(set(lab.tolist()) & set(unl.tolist())) == 0
    assert sorted(lab.tolist() + unl.tolist()) == list(range(n))
    assert torch.equal(t.labelled.images, digits.train.images[lab])
    assert torch.equal(t.labelled.labels, digits.train.labels[lab])
    assert t.data.train.labels is None and len(t.data.train) == n - 30
    assert torch.equal(t.data.train.images, digits.train.images[unl])
    assert t.alpha == pytest.approx(0.1 * n / 30)
    saved = json.loads((tmp_path / "a" / "labelled.json").read_text())
    assert saved["train_indices"] == lab.tolist() and saved["per_class"] == [3] * 10
    # The mixed batch: 10 labelled rows (with their labels) then 24 unlabelled rows.
    _, images, labels = next(t._batches())
    assert images.shape[0] == 34 and labels.shape == (34,)
    assert torch.isin(labels[:10], torch.arange(10)).all() and (labels[10:] == -1).all()
    # The labelled stream is a pure function of (seed, step).
    tail = list(itertools.islice(t.labelled_batches(0), 5, 8))
    for (xa, ya), (xb, yb) in zip(tail, itertools.islice(t.labelled_batches(5), 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = SemiSupervisedTrainer(tiny_config(), tmp_path / "b", data=digits)
    other = SemiSupervisedTrainer(tiny_config("train.seed=1"), tmp_path / "c", data=digits)
    assert torch.equal(again.labelled_indices, lab)
    assert not torch.equal(other.labelled_indices, lab)


def test_resume_is_exact(tmp_path, digits):
    full = SemiSupervisedTrainer(tiny_config(), tmp_path / "full", data=digits)
    full.fit()
    part = SemiSupervisedTrainer(tiny_config(), tmp_path / "part", data=digits, stop_after=2)
    part.fit()
    resumed = SemiSupervisedTrainer.resume(tmp_path / "part", data=digits)
    assert resumed.step == 2
    resumed.fit()
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_000000004")
    b, _ = load_checkpoint(tmp_path / "part" / "checkpoints" / "step_000000004")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert valid and 0.0 <= valid[-1]["valid_error"] <= 1.0 and "ce" in records[0]


def test_cli_train_evaluate_predict_sample(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "--config", "digits", *sets, "--steps", "2", "--run-dir",
                 str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["num_classes"] == 10 and cfg["data"]["labels_per_class"] == 3
    assert main(["evaluate", str(run), "--samples", "2", "--n-examples", "40"]) == 0
    cm = json.loads((run / "confusion_test.json").read_text())
    assert np.asarray(cm["confusion"]).shape == (10, 10)
    assert np.asarray(cm["confusion"]).sum() == 40
    assert (run / "figures" / "confusion_test.png").stat().st_size > 0
    res = json.loads((run / "eval_test_k2.json").read_text())
    assert 0 <= res["classification"]["error"] <= 1 and math.isfinite(res["L_2"])
    assert res["classification"]["elbo_U"] <= res["classification"]["L_1"] + 1e-6
    # The error with q(y|x) averaged over 3 z^BU draws.
    capsys.readouterr()
    assert main(["evaluate", str(run), "--samples", "1", "--n-examples", "40",
                 "--classifier-draws", "3",
                 "--out", str(tmp_path / "three.json")]) == 0
    assert "q(y|x) over 3 z^BU draws" in capsys.readouterr().out
    three = json.loads((tmp_path / "three.json").read_text())["classification"]
    assert three["n_samples"] == 3 and res["classification"]["n_samples"] == 1
    cm3 = json.loads((run / "confusion_test_samples3.json").read_text())
    assert cm3["n_samples"] == 3 and cm3["confusion"] == three["confusion"]
    assert json.loads((run / "confusion_test.json").read_text())["n_samples"] == 1

    out = tmp_path / "pred.npz"
    capsys.readouterr()
    assert main(["predict", str(run), "--data", "digits", "--n-examples", "30", "--out",
                 str(out)]) == 0
    # One name for the count in every console summary (evaluate prints n_examples too).
    printed = capsys.readouterr().out
    assert json.loads(printed[:printed.rindex("}") + 1])["n_examples"] == 30
    pred = np.load(out)
    assert pred["probs"].shape == (30, 10)
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-5)
    # New data as an .npz of grey levels (0..255): binarized with a seeded draw, then q(y|x).
    grey = (np.random.default_rng(0).random((5, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "new.npz", images=grey)
    assert main(["predict", str(run), "--npz", str(tmp_path / "new.npz")]) == 0
    probs = predict(run, grey)
    torch.testing.assert_close(torch.from_numpy(np.load(run / "predictions_new.npz")["probs"]),
                               probs)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    # The same images as a folder of PNGs (issue 42: predict took no folder): the same rule,
    # the same probabilities, each row named by its file; a second run never overwrites.
    from PIL import Image

    folder = tmp_path / "new"
    folder.mkdir()
    for i, image in enumerate(grey):
        Image.fromarray(image).save(folder / f"{i}.png")
    for written in ("predictions_images_new.npz", "predictions_images_new_2.npz"):
        assert main(["predict", str(run), "--images", str(folder)]) == 0
        saved = np.load(run / written)
        torch.testing.assert_close(torch.from_numpy(saved["probs"]), probs)
        assert [Path(f).name for f in saved["files"]] == [f"{i}.png" for i in range(5)]

    # Bad inputs: one line naming the problem and exit 2, never an error rate from garbage.
    floats = np.random.default_rng(0).random((5, 8, 8))
    nan = floats.copy()
    nan[2, 3, 3] = np.nan
    bad_inputs = {
        "nan": ({"images": nan}, r"1 non-finite values \(NaN or inf\), the first in image 2"),
        "complex": ({"images": floats.astype(np.complex64)}, r"expected real numbers .* "
                                                             r"complex64"),
        "strings": ({"images": np.full((5, 8, 8), "a")}, r"expected real numbers .* <U1"),
        "labels_str": ({"images": grey, "labels": np.array(list("abcde"))},
                       r"array 'labels': expected 5 numeric labels, found an array of shape "
                       r"\(5,\) and dtype <U1"),
        "labels_range": ({"images": grey, "labels": np.array([0, 1, 2, 3, 12])},
                         r"labels must be 0\.\.9 \(the model's classes\); found \[12\]"),
    }
    for name, (arrays, message) in bad_inputs.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        capsys.readouterr()
        assert main(["predict", str(run), "--npz", str(tmp_path / f"{name}.npz")]) == 2, name
        assert re.search(message, capsys.readouterr().err), name

    assert main(["sample", str(run), "-n", "4", "--per-class", "3"]) == 0
    assert (run / "figures" / "samples_by_class.png").stat().st_size > 0
    capsys.readouterr()


def test_shipped_semi_supervised_configs():
    for name, preset_filters, dataset in [("mnist_100_labels", 64, "mnist"),
                                          ("fashion_mnist_100_labels", 64, "fashion_mnist"),
                                          ("mnist_100_labels_cpu", 16, "mnist")]:
        cfg = load_run_config(name)
        assert cfg.data.labels_per_class == 10 and cfg.data.name == dataset
        assert cfg.data.binarization == "dynamic" and cfg.model.filters == (preset_filters,)
        assert trainer_class(cfg) is SemiSupervisedTrainer


def test_load_run_data_keeps_labels_for_the_split():
    data = load_run_data(tiny_config())
    assert data.train.labels is not None and data.num_classes == 10


def test_batch_statistics_match_hand_computations(digits):
    """The trainer's logged CE, train error, bounds and q(y|x) entropy, recomputed by hand."""
    model = tiny_model("biva")
    x = to_model_input(fixed_binarization(digits.train, 0).images[:8], "binary")
    model.initialize(x)
    model.eval()
    unl_y = torch.full((4,), -1)
    torch.manual_seed(0)
    first = model(x, labels=torch.cat([torch.zeros(4, dtype=torch.long), unl_y]))
    guess = first.logits[:4].argmax(1)    # q(y|x, z^BU) does not see the labels
    # One label right and three wrong: the train error is 3/4, which a per-batch argmax, a
    # count of the right ones, or an untrained model that gets all four wrong would not give.
    y = torch.cat([guess[:1], (guess[1:] + 1) % 10, unl_y])
    torch.manual_seed(0)
    out = model(x, labels=y)
    stats = model.batch_statistics(out)
    log_q = F.log_softmax(out.logits.float(), 1)
    lab, unl = torch.arange(4), torch.arange(4, 8)
    assert float(stats["n_labelled"]) == 4.0 and float(stats["train_error"]) == 0.75
    torch.testing.assert_close(stats["ce"], -log_q[lab, y[:4]].mean())
    torch.testing.assert_close(stats["train_error"],
                               (log_q[lab].argmax(1) != y[:4]).float().mean())
    torch.testing.assert_close(stats["bound_labelled"], out.bound[lab].mean())
    torch.testing.assert_close(stats["bound_unlabelled"], out.bound[unl].mean())
    entropy = -(log_q[unl].exp() * log_q[unl]).sum(1).mean()
    torch.testing.assert_close(stats["entropy_q_y"], entropy)
    assert 0 < float(entropy.detach()) <= math.log(10) + 1e-6


def test_loss_helper_is_eq_20_on_the_concatenated_batch(digits):
    """model.loss(x_l, y_l, x_u) = model(cat(x_l, x_u), labels=cat(y_l, -1s)), same draws."""
    model, x = initialized_model(digits, 10)
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    a = model.loss(x[:4], y, x[4:])
    torch.manual_seed(0)
    b = model(x, labels=torch.cat([y, torch.full((6,), -1)]))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.bound, b.bound)
    assert a.labels.tolist() == [0, 1, 2, 3] + [-1] * 6
    torch.manual_seed(0)
    only = model.loss(x[:4], y.to(torch.int32))   # labelled only; any integer dtype
    torch.manual_seed(0)
    torch.testing.assert_close(only.loss, model(x[:4], labels=y).loss)


def test_objective_options_and_outputs_by_hand(monkeypatch, digits):
    """prior_layers, free bits, kl_weight and alpha reach eq. 20; the unlabelled rows' log p(x|z)
    and KL are q(y|x)-weighted over classes; every output field is filled."""
    model = tiny_model("biva")
    x = to_model_input(fixed_binarization(digits.train, 0).images[:6], "binary")
    model.initialize(x)
    model.eval()
    monkeypatch.setattr(DiagonalGaussian, "sample", hashed_sample)
    y = torch.tensor([2, 7, -1, -1, -1, -1])
    log_q = F.log_softmax(model.classify_logits(x), 1)
    per_class = [HierarchicalVAE.forward(model, x, td_context=model.class_context(
        torch.full((6,), c))) for c in range(10)]
    q_u = log_q[2:].exp()                                               # (4, 10)
    log_px_c = torch.stack([o.log_px[2:] for o in per_class], 1)        # (4, 10)
    kl_c = torch.stack([o.kl[2:] for o in per_class], 1)                # (4, 10, G)
    out = model(x, labels=y)
    torch.testing.assert_close(out.log_px[2:], (q_u * log_px_c).sum(1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl[2:], (q_u.unsqueeze(2) * kl_c).sum(1), rtol=1e-5,
                               atol=1e-4)
    assert out.group_names == model.group_names and out.labels.tolist() == y.tolist()
    assert out.x_params.shape == (6, 1, 8, 8) and out.latents and out.posteriors
    assert out.class_bounds.shape == (4, 10)
    assert model(x[:2], labels=y[:2]).class_bounds.shape == (0, 10)
    # Free bits per group and example, kl_weight and alpha, by hand from the same pieces.
    lam, w, alpha = 1.0, 0.5, 7.0
    lp = torch.stack([o.log_px for o in per_class], 1)                  # (6, 10)
    kl_all = torch.stack([o.kl for o in per_class], 1)                  # (6, 10, G)
    bound_train = lp - math.log(10) - w * kl_all.clamp_min(lam).sum(2)
    labelled = torch.arange(2)
    f = -bound_train[labelled, y[:2]] + alpha * -log_q[labelled, y[:2]]
    u = (q_u * (bound_train[2:] - log_q[2:])).sum(1)
    want = f.mean() - u.mean()
    got = semi_supervised_loss(model, out, free_bits=lam, kl_weight=w, alpha=alpha)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # At no free bits, weight 1 and the model's alpha, the objective is the pass's own loss.
    torch.testing.assert_close(semi_supervised_loss(model, out), out.loss, rtol=1e-6,
                               atol=1e-4)
    assert out.class_log_px.shape == (4, 10) and out.class_kl.shape == kl_c.shape
    torch.testing.assert_close(out.class_log_px, log_px_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.class_kl, kl_c, rtol=1e-5, atol=1e-4)
    # prior_layers reaches the hierarchy: z1's groups come from the prior (no KL).
    low = model(x, labels=y, prior_layers=1)
    names = model.group_names
    assert (low.kl[:, names.index("z1_bu")] == 0).all()
    assert (low.kl[:, names.index("z2_bu")] != 0).any()
    with pytest.raises(ValueError, match=r"labels: expected shape \(6,\), found \(5,\)"):
        model(x, labels=y[:5])
    with pytest.raises(ValueError, match="need at least one labelled example, got 0"):
        default_alpha(100, 0)


# ----------------------------------------------------------------------------- objectives


def test_paper_objective_is_eq_20_by_hand(digits):
    """"paper": loss = (N_l * mean_l Fbar + N_u * mean_u U) / N (eq. 20 per example), Fbar =
    -L(x, y) + alpha * CE; "balanced" weighs both means 1. Checked on one toy batch."""
    x = to_model_input(fixed_binarization(digits.train, 0).images[:8], "binary")
    y = torch.tensor([3, 1, 4, -1, -1, -1, -1, -1])
    n_l, n_u = 30, 1320
    for objective, (w_l, w_u) in [("paper", (n_l / 1350, n_u / 1350)), ("balanced", (1, 1))]:
        torch.manual_seed(0)
        cfg = preset("digits", filters=(8,), blocks=1, dropout_q=0.0, dropout_p=0.0)
        model = SemiSupervisedBIVA(cfg, 10, alpha=3.0, objective=objective, n_labelled=n_l,
                                   n_unlabelled=n_u)
        model.initialize(x)
        torch.manual_seed(1)
        out = model(x, labels=y)
        lab, unl = y >= 0, y < 0
        f_bar = -out.bound[lab] + 3.0 * out.ce[lab]      # eq. 18 per labelled row
        u = -out.bound[unl]                              # eq. 19 per unlabelled row
        want = w_l * f_bar.mean() + w_u * u.mean()
        torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-4)


def test_paper_objective_conditions_the_top_posterior_on_y(digits):
    """Eq. 15: q(z_L | x, y) changes with y under "paper", not under "balanced" (there only
    the TD path and p see y)."""
    x = to_model_input(fixed_binarization(digits.train, 0).images[:4], "binary")
    for objective, differs in [("paper", True), ("balanced", False)]:
        torch.manual_seed(0)
        cfg = preset("digits", filters=(8,), blocks=1, dropout_q=0.0, dropout_p=0.0)
        model = SemiSupervisedBIVA(cfg, 10, objective=objective, n_labelled=4,
                                   n_unlabelled=40).eval()
        model.initialize(x)
        tops = []
        for c in (0, 7):
            torch.manual_seed(1)
            out = model(x, labels=torch.full((4,), c))
            tops.append(out.posteriors[f"z{model.n_layers}"].mu)
        assert (not torch.allclose(tops[0], tops[1])) is differs, objective


def test_supervised_baseline_never_sees_unlabelled_images(tmp_path):
    """ssl_objective=supervised: every batch (and the data-dependent init) holds labelled
    images only; unlabelled images are replaced by a marker (all ones) that must never show."""
    from biva.data import DatasetSplits, ImageSplit

    cfg = tiny_config("train.ssl_objective=supervised", steps=6)
    data = load_run_data(cfg)
    marked = data.train.images.clone()
    trainer_probe = SemiSupervisedTrainer(cfg, tmp_path / "probe", data=data)
    keep = trainer_probe.labelled_indices
    mask = torch.ones(len(marked), dtype=torch.bool)
    mask[keep] = False
    marked[mask] = 1.0
    poisoned = DatasetSplits(data.name, ImageSplit(marked, data.train.labels), data.valid,
                             data.test, data.kind, data.binarization, data.num_classes)
    seen: list[torch.Tensor] = []
    original_init = SemiSupervisedBIVA.initialize

    def spy_init(self, x, labels=None):
        seen.append(x)
        return original_init(self, x, labels)

    try:
        SemiSupervisedBIVA.initialize = spy_init
        trainer = SemiSupervisedTrainer(cfg, tmp_path / "run", data=poisoned)
    finally:
        SemiSupervisedBIVA.initialize = original_init
    step = trainer.train_step

    def spy_step(x, y=None):
        seen.append(x)
        return step(x, y)

    trainer.train_step = spy_step
    trainer.fit()
    assert len(seen) == 1 + 6
    for x in seen:
        all_ones = (x.flatten(1) == 1).all(1)
        assert not all_ones.any(), "an unlabelled (marked) image reached the model"
    assert all(x.shape[0] == trainer.labelled_batch_size for x in seen[1:])
    # The check can fail: the balanced objective does draw the marked images.
    balanced = SemiSupervisedTrainer(tiny_config(steps=1), tmp_path / "b", data=poisoned)
    _, x, _ = next(balanced._batches())
    assert (x.flatten(1) == 1).all(1).any()


def test_loaded_run_has_the_trained_objective_alpha_and_weights(tmp_path):
    """load_trained rebuilds the model that was trained: its objective, alpha and the paper
    objective's weights N_l / N, N_u / N (not the constructor's defaults 1, 1/2, 1/2)."""
    from biva.runs.loading import load_trained

    run = tmp_path / "run"
    sets = [a for s in [*TINY, "train.ssl_objective=paper", "train.alpha=4.5"]
            for a in ("--set", s)]
    assert main(["train", "--config", "digits", *sets, "--steps", "1", "--run-dir",
                 str(run)]) == 0
    split = json.loads((run / "labelled.json").read_text())
    n_l, n_u = split["n_labelled"], split["n_unlabelled"]
    assert n_l == 30 and n_u > 10 * n_l
    model, _, _ = load_trained(run)
    assert (model.objective, model.alpha) == ("paper", 4.5)
    assert model.loss_weights == pytest.approx((n_l / (n_l + n_u), n_u / (n_l + n_u)))
    (run / "labelled.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"labelled\.json: not valid JSON"):
        load_trained(run)
    (run / "labelled.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelled\.json: no such file; .* 'paper'"):
        load_trained(run)


def test_build_model_passes_its_settings_on():
    from biva.models import build_hierarchy as build_model

    cfg = preset("digits", filters=(8,), blocks=1)
    plain = build_model(cfg)
    assert type(plain) is HierarchicalVAE and plain.config == cfg
    model = build_model(cfg, 10, alpha=2.5, objective="paper", n_labelled=3, n_unlabelled=9)
    assert isinstance(model, SemiSupervisedBIVA) and model.num_classes == 10
    assert (model.alpha, model.objective, model.loss_weights) == (2.5, "paper", (0.25, 0.75))
    default = build_model(cfg, 10)
    assert (default.alpha, default.objective) == (1.0, "balanced")
    with pytest.raises(ValueError, match="without num_classes"):
        build_model(cfg, None, alpha=2.0)


def test_the_objective_applies_free_bits_kl_weight_and_alpha(digits):
    model, x = initialized_model(digits, 10)
    y = torch.tensor([0, 1, 2, 3])
    labels = torch.cat([y, torch.full((6,), -1)])
    settings = {"free_bits": 3.0, "kl_weight": 0.3, "alpha": 40.0}
    torch.manual_seed(0)
    out = model.loss(x[:4], y, x[4:])
    a = semi_supervised_loss(model, out, **settings)
    torch.manual_seed(0)
    narrow = model(x, labels=labels.to(torch.int32))   # any integer dtype
    assert narrow.labels.dtype == torch.long
    torch.testing.assert_close(semi_supervised_loss(model, narrow, **settings), a)
    for key in settings:   # each setting changes the loss, so dropping one would show
        other = semi_supervised_loss(model, out, **{k: v for k, v in settings.items()
                                                    if k != key})
        assert not torch.allclose(other, a), key


def test_sampled_classes_come_from_the_generator():
    """y ~ p(y) is drawn from the caller's generator first, then the latents from the same one:
    the same seed gives the same classes and images, whatever the global RNG does."""
    model = tiny_model()
    model.initialize(torch.bernoulli(torch.rand(32, 1, 8, 8)))
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.manual_seed(0)
    a = model.sample(12, generator=gen())
    torch.manual_seed(1)
    g = gen()
    y = torch.randint(10, (12,), generator=g)
    assert len(set(y.tolist())) > 3
    torch.testing.assert_close(model.sample(12, generator=g, y=y), a)


def test_supervised_objective_loss_is_the_labelled_cross_entropy(digits):
    """"supervised": loss = mean over labelled rows of -log q(y|x), nothing from the bound or
    the unlabelled rows; a batch without labels gives a zero loss that still backpropagates."""
    x = to_model_input(fixed_binarization(digits.train, 0).images[:8], "binary")
    torch.manual_seed(0)
    cfg = preset("digits", filters=(8,), blocks=1, dropout_q=0.0, dropout_p=0.0)
    model = SemiSupervisedBIVA(cfg, 10, alpha=3.0, objective="supervised")
    model.initialize(x)
    y = torch.tensor([3, 1, 4, 1, -1, -1, -1, -1])
    torch.manual_seed(1)
    out = model(x, labels=y)
    want = -F.log_softmax(out.logits.float(), 1)[torch.arange(4), y[:4]].mean()
    torch.testing.assert_close(out.loss, want)
    assert float(out.loss.detach()) > 0.1
    none = model(x, labels=torch.full((8,), -1))
    assert float(none.loss.detach()) == 0.0 and none.loss.requires_grad


def test_constructor_limits_and_the_classifier_sees_sampled_z_bu():
    """Two classes are allowed, one is not; "paper" needs the split sizes. BIVA's classifier
    reads the sampled z^BU (eqs. 12-14), as does the VAE's (its bottom-up latents); LVAE's
    (no z^BU) reads the deterministic BU features only."""
    cfg = preset("digits", filters=(8,), blocks=1, dropout_q=0.0, dropout_p=0.0)
    assert SemiSupervisedBIVA(cfg, 2).num_classes == 2
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        SemiSupervisedBIVA(cfg, 1)
    for sizes in [{}, {"n_labelled": 10}, {"n_labelled": 0, "n_unlabelled": 5}]:
        with pytest.raises(ValueError, match="expected n_labelled and n_unlabelled >= 1"):
            SemiSupervisedBIVA(cfg, 10, objective="paper", **sizes)
    x = torch.bernoulli(torch.rand(6, 1, 8, 8))
    for variant, reads_z in [("biva", True), ("vae", True), ("lvae", False)]:
        torch.manual_seed(0)
        model = SemiSupervisedBIVA(preset("digits", variant=variant, filters=(8,), blocks=1,
                                          dropout_q=0.0, dropout_p=0.0), 10).eval()
        model.initialize(x)
        with torch.no_grad():
            last, q_bu, z_bu, q_top = model._bottom_up(x, 1)
            a = model.classifier(x, (last, q_bu, z_bu, q_top))
            moved = [z + 1.0 for z in z_bu]          # the same features, other z^BU draws
            b = model.classifier(x, (last, q_bu, moved, q_top))
        assert (not torch.allclose(a, b)) is reads_z, variant


def test_classifier_has_the_bu_stages_shapes_on_a_mixed_hierarchy():
    """Eqs. 12-14 on a hierarchy whose stages all differ (filters 4/6/8, kernels 3/5/3,
    latent kernels = map sides): the classifier has L - 1 stages, stage i maps F_{i-1} -> F_i
    channels with kernel K_i, embeds z^BU_i with a conv spanning its map, and a batch with
    labelled and unlabelled rows trains a step."""
    cfg = mixed_hierarchy(latent_kernel=0)
    torch.manual_seed(0)
    model = SemiSupervisedBIVA(cfg, 4)
    clf, r = model.classifier, cfg.spatial_sizes()
    assert len(clf.stages) == 2 and len(clf.embeds) == 2
    for i, (filters, kernel) in enumerate([(4, 3), (6, 5)], start=1):
        convs = [m for m in clf.stages[i - 1].modules() if hasattr(m, "v") and m.v.dim() == 4]
        assert convs[0].v.shape[1] == (3 if i == 1 else 4), i        # F_{i-1} (x: 3 channels)
        assert {c.v.shape[0] for c in convs} <= {filters, 2 * filters}, i   # 2F: gates
        assert filters in {c.v.shape[0] for c in convs}, i
        assert kernel in {c.v.shape[-1] for c in convs}, i
        assert clf.embeds[i - 1].proj.v.shape[-1] == r[i], i          # latent kernel 0
    x = torch.randint(0, 256, (6, 3, 8, 8)).float() / 127.5 - 1
    model.initialize(x)
    out = model(x, labels=torch.tensor([0, 3, -1, -1, 2, -1]))
    out.loss.backward()
    assert out.logits.shape == (6, 4) and torch.isfinite(out.loss)
    assert all(p.grad is not None for p in clf.parameters())
    two = SemiSupervisedBIVA(preset("digits", latents=(4, 2), strides=(2, 2), filters=(8,),
                                    blocks=1), 4)
    assert len(two.classifier.stages) == 1           # L = 2: one stage, fed z^BU_1


def test_classifier_starts_near_uniform_after_the_data_dependent_init(digits):
    """The classifier's output layer starts at scale 0.1: after init q(y|x) is close to
    uniform on every image (entropy > 0.95 log C; at scale 1 some rows fall to ~0.65 log C),
    so no confident random guess is reinforced by the unlabelled term."""
    model, x = initialized_model(digits, 64)
    torch.manual_seed(1)
    p = model.classify(x)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    assert float(entropy.min()) > 0.95 * math.log(10)


def test_default_alpha_and_the_classes_sample_accepts():
    """alpha = 0.1 N / N_l from one labelled example on; sample's y is one class or n classes,
    each in 0..C-1, and anything else is refused with the range in the message."""
    assert default_alpha(100, 1) == pytest.approx(10.0)
    assert default_alpha(55000, 100) == pytest.approx(55.0)
    with pytest.raises(ValueError, match="at least one labelled example, got 0"):
        default_alpha(100, 0)
    model = tiny_model()
    model.initialize(torch.bernoulli(torch.rand(16, 1, 8, 8)))
    assert model.sample(2, y=[0, 9]).shape == (2, 1, 8, 8)
    assert model.sample(3, y=4).shape == (3, 1, 8, 8)
    for bad in ([1, 2, 3], [0, 10], [-1, 0], [[1, 2]]):
        with pytest.raises(ValueError, match=r"y: expected 2 classes in 0\.\.9"):
            model.sample(2, y=bad)


@pytest.mark.parametrize("latent_type", ["conv", "dense"])
def test_class_features_have_each_td_stages_shape_and_start_small(latent_type):
    """y's features for TD stage i (and, for "paper", for the top posterior's head) have that
    stage's channels F_i; a dense hierarchy gets one feature map per position (its map side),
    a convolutional one a per-channel bias broadcast over the map. They start at scale 0.1, so
    the class barely moves the initial bound. "paper" accepts one example per split."""
    cfg = mixed_hierarchy(latent_type)
    torch.manual_seed(0)
    model = SemiSupervisedBIVA(cfg, 4, objective="paper", n_labelled=1, n_unlabelled=1)
    assert model.loss_weights == (0.5, 0.5)
    r = cfg.spatial_sizes()
    for i, (e, f) in enumerate(zip(model.y_embed, (4, 6, 8), strict=True), start=1):
        side = r[i] if latent_type == "dense" else 1
        assert e.shape == (4, f, side, side), i
    side = r[-1] if latent_type == "dense" else 1
    assert model.top_y_embed.shape == (4, 8, side, side)
    for e in [*model.y_embed, model.top_y_embed]:
        assert 0.05 < float(e.detach().std()) < 0.2
    x = torch.randint(0, 256, (4, 3, 8, 8)).float() / 127.5 - 1
    model.initialize(x)
    out = model(x, labels=torch.tensor([1, -1, 3, -1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(e.grad is not None for e in model.y_embed)


@pytest.mark.parametrize("source", ["sample", "mean"])
def test_the_classifier_reads_the_z_bu_draws_or_their_means(digits, source):
    """model.classifier_input = "mean": q(y|x, z^BU) reads the posterior means of z^BU_i and
    ignores the draws handed to it; "sample" (the default) reads the draws."""
    torch.manual_seed(0)
    cfg = preset("digits", filters=(8,), blocks=1, dropout_q=0.0, dropout_p=0.0,
                 classifier_input=source)
    model = SemiSupervisedBIVA(cfg, 10, alpha=3.0)
    x = to_model_input(fixed_binarization(digits.train, 0).images[:16], "binary")
    model.initialize(x)
    model.eval()
    with torch.no_grad():
        last, q_bu, z_bu, q_top = model._bottom_up(x, 1)
        logits = model.classifier(x, (last, q_bu, z_bu, q_top))
        other = [z + 3.0 * torch.randn_like(z) for z in z_bu]   # other draws, same q
        moved = model.classifier(x, (last, q_bu, other, q_top))
    if source == "mean":
        torch.testing.assert_close(moved, logits)
    else:
        assert (moved - logits).abs().max() > 1e-3
    # The choice survives saving: build_model reads it from the config.
    from biva.models import build_hierarchy as build_model

    assert build_model(cfg, 10).classifier.from_means == (source == "mean")
