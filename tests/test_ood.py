"""Anomaly detection with L^{>k}: scores, detection metrics, table/figure, ``biva ood``."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from biva import HierarchicalVAE, LinearGaussianHierarchy, preset
from biva.cli.main import main
from biva.ood.experiment import OODSettings, run_ood
from biva.ood.metrics import (
    gaussian_kde,
    ood_metrics,
    ood_table,
    score_samples,
    table_markdown,
)
from biva.runs.evaluate import EvalSettings, evaluate_run


def _tiny(variant):
    torch.manual_seed(0)
    model = HierarchicalVAE(preset("digits", variant=variant, filters=(8,), blocks=1))
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    model.initialize(x)
    return model.eval(), x


@pytest.mark.parametrize("variant", ["biva", "lvae"])
def test_score_samples_is_the_l_gt_k_estimator_on_the_same_samples(variant):
    model, x = _tiny(variant)
    torch.manual_seed(5)
    s0 = score_samples(model, x, k=0)
    torch.manual_seed(5)
    elbo = model(x).elbo
    assert s0.dtype == torch.float64 and s0.shape == (6,)
    torch.testing.assert_close(s0, elbo.double())
    # Batching: one forward pass per batch, in order, on the same random stream.
    torch.manual_seed(7)
    s2 = score_samples(model, x, k=2, batch_size=4)
    torch.manual_seed(7)
    ref = torch.cat([model(x[:4], prior_layers=2).elbo, model(x[4:], prior_layers=2).elbo])
    torch.testing.assert_close(s2, ref.double())


def test_scores_bound_the_exact_log_marginal():
    torch.manual_seed(0)
    m = LinearGaussianHierarchy((6, 4, 3, 2), seed=2, exact_posterior=True)
    x = m.sample_data(12, seed=3)
    log_px = m.log_marginal(x)
    # Exact posterior, k = 0: every weight is p(x), through batching and chunking.
    torch.testing.assert_close(score_samples(m, x, k=0, n_samples=50, batch_size=5,
                                             max_batch=40), log_px)
    # E[L^{>k}_K] <= log p(x). The weights are heavy-tailed (one in 1e5 can hold half the
    # sum), so one realization of L_K may overshoot and a delta-method error means nothing:
    # average R independent replicates (rows of x repeated) and use their spread instead.
    R, K = 40, 100
    xr = x.repeat(R, 1)
    for k in (1, 2):
        s = score_samples(m, xr, k=k, n_samples=K, batch_size=120).view(R, -1)
        mean, se = s.mean(0), s.std(0) / math.sqrt(R)
        assert torch.all(mean <= log_px + 4 * se), k
        assert (log_px - mean).mean() > 0.05, k        # the prior below k loosens the bound
        s1 = score_samples(m, xr, k=k, n_samples=1).view(R, -1)
        assert s1.mean() < mean.mean(), k              # L_1 <= L_K


def test_metrics_match_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    for trial in range(5):
        s_in = rng.integers(0, 6, size=50).astype(float)       # many ties, across the classes
        s_out = rng.integers(-2, 4, size=37).astype(float) + (0.5 if trial == 4 else 0.0)
        m = ood_metrics(torch.from_numpy(s_in), s_out)
        y = np.r_[np.zeros(50), np.ones(37)]
        anomaly = -np.r_[s_in, s_out]
        assert m["auroc"] == pytest.approx(roc_auc_score(y, anomaly), abs=1e-12)
        assert m["auprc"] == pytest.approx(average_precision_score(y, anomaly), abs=1e-12)
        fpr, tpr, _ = roc_curve(y, anomaly, drop_intermediate=False)
        assert m["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
        assert (m["n_in"], m["n_out"]) == (50, 37)
    perfect = ood_metrics([0.0, 1.0, 2.0], [-5.0, -4.0])
    assert (perfect["auroc"], perfect["auprc"], perfect["fpr_at_95_tpr"]) == (1.0, 1.0, 0.0)
    assert ood_metrics([-5.0, -4.0], [0.0, 1.0, 2.0])["auroc"] == 0.0
    assert ood_metrics([1.0, 1.0], [1.0, 1.0])["auroc"] == 0.5
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([0.0, float("nan")], [1.0])


def test_fpr_at_95_tpr_by_hand():
    # Anomaly scores (= -L): OOD 1..20. Catching 95% (19 of 20) needs the threshold at 2;
    # in-distribution anomaly scores >= 2 are 2 (a tie: flagged), 2.5, 3, 10, 30 -> 5 of 10.
    out_l = -np.arange(1.0, 21.0)
    in_l = -np.array([0, 0.5, 1.5, 2, 2.5, 3, 10, 30, -5, -6], dtype=float)
    assert ood_metrics(in_l, out_l)["fpr_at_95_tpr"] == 0.5


def test_table_and_kde():
    scores = {"a": {0: torch.tensor([-10.0, -12.0]), 2: torch.tensor([-20.0, -22.0])},
              "b": {0: torch.tensor([-30.0, -30.0]), 2: torch.tensor([-40.0, -44.0])}}
    t = ood_table(scores, in_name="a", kind="binary", dims=64)
    cell = t["datasets"]["b"]["k"]["2"]
    assert cell["mean_nats"] == -42.0 and cell["stderr_nats"] == pytest.approx(2.0)
    assert cell["bits_per_dim"] == pytest.approx(42.0 / (64 * math.log(2)))
    assert t["datasets"]["a"]["role"] == "in" and t["unit"] == "nats" and t["ks"] == [0, 2]
    md = table_markdown(t)
    assert "| a (in) | 2 | -21.00 ± 1.00 | -11.00 ± 1.00 |" in md
    assert "bits/dim" in table_markdown(ood_table(scores, in_name="a", kind="8bit", dims=64))
    v = np.random.default_rng(1).normal(3.0, 2.0, size=500)
    grid = np.linspace(-10, 16, 2001)
    dens = gaussian_kde(v, grid)
    assert np.sum(dens) * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.isfinite(gaussian_kde(np.ones(5), grid)))


@pytest.fixture(scope="module")
def ood_run(tiny_run, tmp_path_factory):
    """A copy of the suite's tiny run (the tests write ood/ into it) and two npz sets beside it."""
    root = tmp_path_factory.mktemp("ood")
    run = shutil.copytree(tiny_run, root / "run")
    from sklearn.datasets import load_digits

    images = (load_digits().images[:120] / 16.0).astype(np.float32)
    np.savez(root / "flipped.npz", images=1.0 - images[:, ::-1, :])   # OOD: inverted, flipped
    np.savez(root / "big.npz", images=np.zeros((20, 10, 10), np.float32))
    return run, root


def test_cli_writes_every_promised_file(ood_run, capsys):
    run, root = ood_run
    rc = main(["ood", str(run), "--ood-data", "npz", "invert", "uniform", "--ood-path",
               str(root / "flipped.npz"), "--prior-layers", "0,2", "--n-examples", "30",
               "--ood-split",
               "all", "--threads", "1", "--device", "cpu", "--n-valid", "40",
               "--score", "elbo,lk,llr,llr-mean", "--bootstrap", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "wrong way round" in printed
    out = run / "ood"
    for name in ("table.md", "table.json", "metrics.json", "metrics.md", "histograms.png",
                 "histograms_llr.png", "histograms_llr_mean.png", "scores.npz", "scores.csv",
                 "detector.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        sets = ("digits", "flipped", "invert", "uniform")
        want = {f"{s}_{q}" for s in sets
                for q in ("k0", "k2", "llr_k2", "llr_mean_k2", "detector")}
        assert set(z.files) == want
        detector_anomaly = {s: z[f"{s}_detector"] for s in sets}
        assert all(z[f].shape == (30,) and z[f].dtype == np.float64 for f in z.files)
        assert np.all(np.isfinite(z["flipped_k2"])) and np.all(z["digits_k0"] < 0)
        # LLR^{>k} = L - L^{>k} on the same images and draws, as written.
        np.testing.assert_allclose(z["digits_llr_k2"], z["digits_k0"] - z["digits_k2"])
        first = float(z["digits_k0"][0])
    table = json.loads((out / "table.json").read_text())
    assert table["in_distribution"] == "digits" and table["unit"] == "nats"
    assert set(table["datasets"]) == {"digits", "flipped", "invert", "uniform"}
    assert table["ks"] == [0, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "positive class = out-of-distribution" in metrics["convention"]
    assert set(metrics["metrics"]) == {"elbo", "lk", "llr", "llr_mean"}
    assert set(metrics["metrics"]["llr"]["flipped"]) == {"2"}
    assert set(metrics["metrics"]["elbo"]["flipped"]) == {"0"}
    for k in ("0", "2"):
        m = metrics["metrics"]["lk"]["flipped"][k]
        assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr_at_95_tpr"] <= 1 and m["n_out"] == 30
        assert 0 <= m["fpr_at_80_tpr"] <= m["fpr_at_95_tpr"]
        lo, hi = m["auroc_ci"]
        assert lo <= m["auroc"] <= hi
    # k chosen on validation images (the synthetic sets have them; --ood-split all has not).
    sel = metrics["selected_on_validation"]["lk"]
    assert set(sel) == {"invert", "uniform"} and sel["uniform"]["k"] in (0, 2)
    # The default detector: the density of [L, LLR^{>2}] on the 40 validation digits alone.
    det = json.loads((out / "detector.json").read_text())
    assert det["score"] == "dos" and det["k"] == [2] and det["n_fit"] == 40
    assert len(det["dos"]["reference"]) == 40 and det["dos"]["columns"] == ["L", "LLR_mean>2"]
    assert metrics["detector"]["chosen_on"] == []
    assert set(metrics["detector"]["test"]) == {"flipped", "invert", "uniform"}
    assert all(0 <= m["auroc"] <= 1 for m in metrics["detector"]["test"].values())
    # The per-example anomalies written are the ones the report's figures come from.
    flagged = (detector_anomaly["digits"] > det["threshold"]).mean()
    assert flagged == pytest.approx(metrics["detector"]["test_in_flagged"])
    m = ood_metrics(-detector_anomaly["digits"], -detector_anomaly["uniform"])
    assert m["auroc"] == pytest.approx(metrics["detector"]["test"]["uniform"]["auroc"])
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 120 and rows[0]["role"] == "in"
    assert float(rows[0]["L_gt0_nats"]) == first and "LLR_gt2_nats" in rows[0]
    assert float(rows[0]["detector_anomaly"]) == detector_anomaly["digits"][0]
    assert "L^{>2}" in (out / "table.md").read_text()
    assert "k chosen by validation AUROC" in (out / "metrics.md").read_text()
    assert "no anomaly examples" in (out / "metrics.md").read_text()


def test_detector_chosen_on_synthetic_sets(ood_run, tmp_path):
    run, _root = ood_run
    base = dict(run_dir=run, ood_data=["invert"], prior_layers="0,2", n_examples=20,
                n_valid=30, bootstrap=0)
    out = tmp_path / "ood"
    run_ood(OODSettings(**{**base, "ood_data": ["invert", "uniform"]}, detector="synthetic",
                        out=out))
    det = json.loads((out / "detector.json").read_text())
    assert det["score"] in ("elbo", "lk", "llr") and det["n_fit"] == 30
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detector"]["chosen_on"] == ["invert", "uniform"]
    run_ood(OODSettings(**base, detector="none", out=tmp_path / "none"))
    assert not (tmp_path / "none" / "detector.json").exists()
    # Ratios alone (no score that draws L^{>k}): the table of L^{>k} is still written.
    run_ood(OODSettings(**base, score="elbo,llr_mean", out=tmp_path / "ratios"))
    assert "L^{>2}" in (tmp_path / "ratios" / "table.md").read_text()


def test_cli_errors_are_clear(ood_run, capsys, tmp_path):
    run, root = ood_run
    base = ["ood", str(run), "--threads", "1", "--device", "cpu", "--n-examples", "4"]
    assert main(base + ["--ood-data", "npz", "--ood-path", str(root / "big.npz")]) == 2
    err = capsys.readouterr().err
    assert "(1, 10, 10)" in err and "(1, 8, 8)" in err
    assert main(base + ["--ood-data", "npz", "--ood-path", str(root / "flipped.npz"),
                        "--prior-layers", "3"]) == 2
    assert "0..2" in capsys.readouterr().err
    assert main(base + ["--ood-data", "npz"]) == 2
    assert "--ood-path" in capsys.readouterr().err
    assert main(base + ["--pair", "cifar10_vs_svhn", "--data-root", str(tmp_path)]) == 2
    assert "cifar10: missing file" in capsys.readouterr().err


# ------------------------------------------------------------------- the detector

@pytest.fixture(scope="module")
def toy_model():
    """A tiny hierarchy trained on 4x4 binary prototypes (see tests/brute_force.py)."""
    from brute_force import tiny_config, toy_data, train

    torch.set_num_threads(1)
    torch.manual_seed(1)
    return train(HierarchicalVAE(tiny_config("biva")), steps=400, lr=1e-2, free_bits=0.0), toy_data


@pytest.mark.slow
def test_detector_separates_known_in_and_out_distributions(toy_model, tmp_path):
    from sklearn.metrics import roc_auc_score

    from biva.ood.detector import OODDetector

    model, toy_data = toy_model
    x_valid, x_test = toy_data(400, seed=11), toy_data(400, seed=12)
    g = torch.Generator().manual_seed(0)
    noise_valid = torch.bernoulli(torch.full((400, 1, 4, 4), 0.5), generator=g)
    noise_test = torch.bernoulli(torch.full((400, 1, 4, 4), 0.5), generator=g)
    det = OODDetector(model, kind="binary", score=None, k=None).fit(
        x_valid, {"noise": noise_valid})
    assert len(det.selection_) == 2 + 3 + 1   # llr k = 1, 2; lk k = 0, 1, 2; elbo k = 0
    s_in, s_out = det.score_samples(x_test), det.score_samples(noise_test)
    # Prototypes with 10% flips vs fair coins: far apart under any sensible score.
    auroc = roc_auc_score(np.r_[np.zeros(400), np.ones(400)], -np.r_[s_in, s_out])
    assert auroc > 0.9
    # The threshold keeps ~95% of the in-distribution validation images.
    assert abs((det.predict(x_valid) == 1).mean() - 0.95) < 0.02
    assert (det.predict(x_test) == 1).mean() > 0.85
    assert (det.predict(noise_test) == -1).mean() > 0.5
    np.testing.assert_array_equal(det.decision_function(x_test) >= 0, det.predict(x_test) == 1)
    # Save / load round trip: same state, same decisions.
    path = det.save(tmp_path / "detector.json")
    again = OODDetector.load(path, model)
    assert again.to_dict() == det.to_dict()
    np.testing.assert_array_equal(again.score_samples(x_test), s_in)
    with pytest.raises(ValueError, match="bad.json: score: expected one of"):
        (tmp_path / "bad.json").write_text("{}")
        OODDetector.load(tmp_path / "bad.json", model)
    with pytest.raises(ValueError, match="not a saved OODDetector"):
        (tmp_path / "bad.json").write_text("{")
        OODDetector.load(tmp_path / "bad.json", model)


@pytest.mark.parametrize("field,value,match", [
    ("threshold", "NaN", "threshold: expected a finite number"),      # what biva writes for NaN
    ("threshold", float("inf"), "threshold: expected a finite number"),
    ("batch_size", -5, "batch_size: expected an integer in 1"),
    ("n_samples", 0, "n_samples: expected an integer in 1"),
    ("k", 7, "k: expected an integer in 0..2"),
    ("score", "llr", None),                                         # fitted score: unchanged
    ("kind", "8bit", "kind: fitted for 8bit images, but the model has a bernoulli"),
    ("in_tpr", 1.5, "in_tpr: expected a rate in"),
    ("model_sha256", "0" * 64, "model_sha256: fitted on other weights"),
])
def test_a_saved_detector_is_checked_field_by_field(toy_model, tmp_path, field, value, match):
    """A NaN threshold flagged 100% of images without a word, batch_size -5 made predict
    return nothing, and a detector loaded onto any model."""
    from biva.ood.detector import OODDetector

    model, toy_data = toy_model
    det = OODDetector(model, kind="binary", score="llr", k=1).fit(toy_data(50, seed=3))
    d = det.to_dict()
    d[field] = value
    path = tmp_path / "detector.json"
    path.write_text(json.dumps(d))
    if match is None:
        assert OODDetector.load(path, model).k_ == 1
        return
    with pytest.raises(ValueError, match=match) as info:
        OODDetector.load(path, model)
    assert str(path) in str(info.value)


def test_a_detector_is_refused_on_other_weights_and_old_files_warn(toy_model, tmp_path):
    import copy

    from biva.ood.detector import OODDetector, model_fingerprint

    model, toy_data = toy_model
    path = OODDetector(model, kind="binary", score="lk", k=1).fit(toy_data(50, seed=3)).save(
        tmp_path / "detector.json")
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ValueError, match="fitted on other weights"):
        OODDetector.load(path, other)
    d = json.loads(path.read_text())
    del d["model_sha256"]
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="older biva without model_sha256"):
        OODDetector.load(path, model)


def test_detector_needs_choices_or_ood_data(toy_model):
    from biva.ood.detector import OODDetector

    model, toy_data = toy_model
    x = toy_data(50, seed=3)
    with pytest.raises(ValueError, match="no validation OOD"):
        OODDetector(model, kind="binary", score=None).fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        OODDetector(model, kind="binary").predict(x)
    with pytest.raises(ValueError, match="k >= 1"):
        OODDetector(model, kind="binary", score="llr", k=0).fit(x)
    det = OODDetector(model, kind="binary", score="llr", k=2).fit(x)   # one candidate
    assert (det.score_, det.k_) == ("llr", 2) and det.selection_ == []


def test_detector_for_run_fits_on_validation_never_the_test_split(ood_run,
                                                                  poisoned_test_split):
    from biva.ood.detector import detector_for_run

    run, _root = ood_run
    det = detector_for_run(run, n_valid=60, score=None, synthetic=("uniform", "invert"))
    assert det.n_fit_ == 60 and det.score_ in ("llr", "lk", "elbo")
    assert {tuple(sorted(r["auroc"])) for r in det.selection_} == {("invert", "uniform")}


def test_metrics_with_intervals_by_hand():
    from biva.ood.metrics import ood_metrics_ci

    s_in = np.arange(10.0)           # normality: in-distribution 0..9
    s_out = np.arange(10.0) - 5.5    # OOD shifted down
    m = ood_metrics_ci(s_in, s_out, n_boot=100)
    # Anomaly = -score. 80% TPR needs the 8 most anomalous OOD (scores -5.5..1.5): the
    # threshold at OOD score 1.5 flags in-distribution 0 and 1 -> FPR 0.2.
    assert m["fpr_at_80_tpr"] == pytest.approx(0.2)
    assert m["fpr_at_95_tpr"] == pytest.approx(0.4)
    for name in ("auroc", "auprc", "fpr_at_80_tpr", "fpr_at_95_tpr"):
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] <= hi
    assert ood_metrics_ci(s_in, s_out, n_boot=0).get("auroc_ci") is None


def test_fit_to_shape_turns_grey_digits_into_colour_images_of_the_model_size():
    """--fit-shape: a 28x28 grey image becomes 32x32 with three equal channels; a constant
    image stays that constant (area resize, no padding); colour -> grey uses the luma."""
    from biva.data import ImageSplit, fit_to_shape

    grey = torch.full((2, 1, 28, 28), 77, dtype=torch.uint8)
    grey[1, 0, :, 14:] = 200
    out = fit_to_shape(ImageSplit(grey), (3, 32, 32)).images
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert (out[0] == 77).all()
    assert torch.equal(out[1, 0], out[1, 2]) and out[1, 0, 0, 0] == 77 and out[1, 0, 0, 31] == 200
    rgb = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    rgb[:, 1] = 100
    assert (fit_to_shape(ImageSplit(rgb), (1, 4, 4)).images == round(0.587 * 100)).all()


def test_ood_on_one_image_writes_every_file_without_a_warning(ood_run, tmp_path, capsys):
    """One image per set: no bootstrap spread, degenerate histograms; still exit 0, strict
    JSON, and no warning (a NaN density or a non-JSON float used to crash or warn)."""
    import warnings

    out = tmp_path / "ood"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_ood(OODSettings(ood_run[0], ood_data=["uniform"], n_examples=1, n_valid=1,
                            out=out))
    for name in ("metrics.json", "table.json"):
        json.loads((out / name).read_text())
    # A density of one image's statistics is not defined: said, and no detector.json.
    assert "--n-valid >= 2" in capsys.readouterr().err
    assert not (out / "detector.json").exists()
    # One image has no standard error: null, as biva evaluate writes it (it said 0.0).
    cells = json.loads((out / "table.json").read_text())["datasets"]
    assert all(c["stderr_nats"] is None for row in cells.values() for c in row["k"].values())
    capsys.readouterr()
    res = evaluate_run(ood_run[0], EvalSettings(n_samples=3, n_examples=1))
    assert res["L_3_stderr"] is None
    capsys.readouterr()


def test_jigsaw_shuffles_whole_tiles_and_keeps_every_pixel():
    from biva.data import ImageSplit
    from biva.ood.sets import synthetic_set

    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    y = synthetic_set("jigsaw", ImageSplit(x), "8bit", seed=1).images
    assert y.shape == x.shape and not torch.equal(y, x)
    tiles = lambda t: {tuple(t[:, i:i + 2, j:j + 2].flatten().tolist())  # noqa: E731
                       for i in range(0, 8, 2) for j in range(0, 8, 2)}
    for a, b in zip(x, y, strict=True):
        assert tiles(a) == tiles(b)               # the same 16 tiles, moved
    assert torch.equal(y, synthetic_set("jigsaw", ImageSplit(x), "8bit", seed=1).images)
    with pytest.raises(ValueError, match="must divide by 4"):
        synthetic_set("jigsaw", ImageSplit(x[:, :, :6, :6]), "8bit")
