"""benchmarks/ssl_summary.py --draws: the paper's protocol (Table 3) over label draws."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ssl_summary  # noqa: E402


def _run(out: Path, name: str, variant: str, error: float, valid: list[float]) -> None:
    run = out / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"variant": variant,
                                                           "classifier_input": "mean"}}))
    lines = [{"kind": "train", "step": 50 * (i + 1), "cpu_s": 60.0 * (i + 1)}
             for i in range(len(valid))]
    lines += [{"kind": "valid", "step": 50 * (i + 1), "cpu_s": 60.0 * (i + 1),
               "valid_error": v} for i, v in enumerate(valid)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "eval_test_k1.json").write_text(json.dumps(
        {"classification": {"error": error, "n_examples": 10000}}))


def test_draws_are_grouped_by_recipe_with_mean_and_sample_std(tmp_path, capsys):
    for seed, err in enumerate([0.05, 0.04, 0.06]):
        _run(tmp_path, f"means_seed{seed}", "biva", err, [0.2, 0.1])
    for seed, err in enumerate([0.045, 0.047]):
        _run(tmp_path, f"m2_seed{seed}", "vae", err, [0.3])
    _run(tmp_path, "balanced", "biva", 0.05, [0.2])       # one run, not a draw
    ssl_summary.main(tmp_path, by_draw=True)
    groups = {g["recipe"]: g for g in json.loads((tmp_path / "draws.json").read_text())}
    assert set(groups) == {"means", "m2"}
    g = groups["means"]
    assert g["variant"] == "biva" and g["seeds"] == [0, 1, 2]
    assert g["test_errors"] == [0.05, 0.04, 0.06] and g["test_examples"] == [10000] * 3
    assert g["mean"] == statistics.fmean([0.05, 0.04, 0.06])
    assert abs(g["std"] - 0.01) < 1e-12                  # sample std, not population
    assert groups["m2"]["variant"] == "vae" and len(groups["m2"]["test_errors"]) == 2
    assert "means (biva, 3 draws): 5.00% ± 1.00" in capsys.readouterr().out


def test_equal_steps_take_the_best_validation_error_up_to_each_step_budget(tmp_path):
    """--at-steps compares models that cost different CPU time a step at equal training."""
    _run(tmp_path, "means_seed0", "biva", 0.05, [0.3, 0.1, 0.2])      # steps 50, 100, 150
    _run(tmp_path, "means_seed1", "biva", 0.06, [0.4, 0.2])           # steps 50, 100
    ssl_summary.main(tmp_path, by_draw=True, at_steps=(50, 100, 150))
    g = json.loads((tmp_path / "draws.json").read_text())[0]["valid_at_steps"]
    assert g["50"]["errors"] == [0.3, 0.4] and abs(g["50"]["mean"] - 0.35) < 1e-12
    assert g["100"]["errors"] == [0.1, 0.2]               # the best so far, not the last
    assert g["150"]["errors"] == [0.1, None]              # draw 1 never trained 150 steps
    assert g["150"]["mean"] == 0.1
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert rows["means_seed0"]["valid_at_steps"] == {"50": 0.3, "100": 0.1, "150": 0.1}
    assert "best valid error within 100 steps" in (tmp_path / "summary.md").read_text()


def test_the_paired_difference_and_its_interval_by_hand(tmp_path):
    # Same seed, same labels: means - m2 per draw, mean and the t-interval with n - 1 = 2.
    for seed, (a, b) in enumerate([(0.05, 0.04), (0.07, 0.04), (0.06, 0.06)]):
        _run(tmp_path, f"means_seed{seed}", "biva", a, [0.2])
        _run(tmp_path, f"m2_seed{seed}", "vae", b, [0.3])
    _run(tmp_path, "m2_seed7", "vae", 0.5, [0.3])          # unpaired: left out
    ssl_summary.main(tmp_path, by_draw=True)
    (p,) = json.loads((tmp_path / "paired.json").read_text())
    assert p["seeds"] == [0, 1, 2] and p["n"] == 3
    diffs = [0.01, 0.03, 0.0]
    assert p["differences"] == pytest.approx(diffs)
    mean = 0.04 / 3
    half = 4.302652729749464 * statistics.stdev(diffs) / 3 ** 0.5   # t_{0.975, 2}
    assert p["mean"] == pytest.approx(mean)
    assert p["ci95"] == pytest.approx([mean - half, mean + half])


def test_step_cost_and_share_of_a_core_from_the_records():
    records = [{"kind": "train", "step": 100, "cpu_s": 30.0, "time": 1000.0},
               {"kind": "train", "step": 300, "cpu_s": 90.0, "time": 1120.0}]
    assert ssl_summary.step_cost(records) == {"cpu_ms_per_step": 300.0, "cpu_share": 0.5}
    assert ssl_summary.step_cost(records[:1]) == {"cpu_ms_per_step": None, "cpu_share": None}
