"""The headline figures of the shipped cards: 95% intervals over images and Monte Carlo draws
(issue 40 item 6), checked against independent computations on the real digits model."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest
import torch

from biva import pretrained
from biva.pretrained.measure import wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    # 5 errors in 100 (Newcombe 1998, table I): 0.0215 to 0.1118.
    lo, hi = wilson_interval(5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0215, 0.1118)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def digits():
    return pretrained.load("digits")


def test_a_bound_interval_is_the_normal_interval_over_the_images(digits):
    """Whole test split: the mean of the per-image bounds +- 1.96 s.e., by hand from the
    same seeded evaluation; in bits/dim the ends flip with the sign."""
    from biva.data import evaluation_split, load_run_data
    from biva.objectives.splits import evaluate_bounds

    got = pretrained.measure_interval(digits, "L_1")
    data = load_run_data(digits.config)
    test = evaluation_split(data, "test", seed=digits.config.train.seed)
    res = evaluate_bounds(digits.model, test, data.kind, digits.config.model.bits,
                          n_samples=1, batch_size=digits.config.eval.batch_size, seed=0)
    per = torch.tensor(res["per_example"]["L_1"], dtype=torch.float64)
    half = 1.959964 * float(per.std()) / math.sqrt(len(per))
    assert got["n_examples"] == len(test) and got["subset"] == "all"
    assert got["value"] == pytest.approx(float(per.mean()), abs=1e-9)
    assert got["interval_95"] == pytest.approx([float(per.mean()) - half,
                                                float(per.mean()) + half], abs=1e-9)
    bpd = pretrained.measure_interval(digits, "bpd_1")
    lo, hi = bpd["interval_95"]
    assert lo < bpd["value"] < hi
    dims_ln2 = 64 * math.log(2)
    assert (lo, hi) == pytest.approx([-(got["interval_95"][1]) / dims_ln2,
                                      -(got["interval_95"][0]) / dims_ln2], rel=1e-6)


def test_a_seeded_subset_is_drawn_not_the_first_images(digits):
    first = pretrained.measure_interval(digits, "L_1", n_examples=100)
    drawn = pretrained.measure_interval(digits, "L_1", n_examples=100, subset_seed=0)
    again = pretrained.measure_interval(digits, "L_1", n_examples=100, subset_seed=0)
    assert (first["subset"], drawn["subset"]) == ("first", "seeded:0")
    assert drawn == again and drawn["value"] != first["value"]
    assert first["value"] == pretrained.measure(digits, "L_1", n_examples=100)


def test_every_card_headline_is_a_figure_in_its_interval_on_enough_images():
    """Cards with headline figures give them on the whole test split or a seeded subset of at
    least 2,000 images, each inside its interval, for the metrics of the card's scores."""
    root = resources.files("biva.pretrained")
    cards = [json.loads(c.joinpath("card.json").read_text()) for c in root.iterdir()
             if c.is_dir() and c.joinpath("card.json").is_file()]
    with_headline = [c for c in cards if "headline" in c]
    assert with_headline, "no card has headline figures"
    for card in with_headline:
        assert {h["metric"] for h in card["headline"]} == {s["metric"] for s in card["scores"]}
        for h in card["headline"]:
            lo, hi = h["interval_95"]
            assert lo <= h["value"] <= hi, (card["name"], h)
            assert h["subset"] == "all" or (h["subset"].startswith("seeded:")
                                            and h["n_examples"] >= 2000), (card["name"], h)
