"""The ablation command (Table 1 / Figure 2 of the paper) and the models it builds."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from biva import HierarchicalVAE, ModelConfig
from biva.cli.main import main
from biva.config import as_variant
from biva.config.presets import preset
from biva.config.run import TrainConfig
from biva.experiments.ablation import (
    ABLATION_VARIANTS,
    NVAE_SPECTRAL_REG,
    AblationBudget,
    AblationRun,
    ablation_model,
    ablation_train,
    doubled_depth,
    equal_compute_steps,
    evaluate_run_for_ablation,
    plan_runs,
    summarize,
    table_markdown,
    value_at_step,
)
from biva.models import build_hierarchy


def small(**kw) -> ModelConfig:
    base = dict(variant="biva", input_shape=(1, 8, 8), likelihood="bernoulli",
                latents=(6, 4, 2), latent_type="dense", filters=(8, 8, 16), kernels=(5, 3, 3),
                strides=(2, 1, 2), blocks=1, dropout_q=0.0, dropout_p=0.0)
    return ModelConfig(**{**base, **kw})


def test_lvae_plus_with_2l_minus_1_layers_has_bivas_groups_as_layers():
    base = small()
    deep = ablation_model(base, "lvae+2l-1")
    assert deep.variant == "lvae+"
    assert deep.n_layers == 2 * base.n_layers - 1 == 5
    assert deep.latents == (6, 6, 4, 4, 2)
    assert deep.filters == (8, 8, 8, 8, 16)
    assert deep.kernels == (5, 5, 3, 3, 3)
    assert deep.strides == (2, 1, 1, 1, 2)
    # Both layers of a pair sit at BIVA's resolution r_i: 8 -> 4, 4, 4, 4 -> 2.
    assert deep.spatial_sizes() == [8, 4, 4, 4, 4, 2]
    model, biva = HierarchicalVAE(deep), HierarchicalVAE(base)
    assert model.n_groups == biva.n_groups == 5
    units = sum(math.prod(model.latent_shape(i)) for i in range(1, 6))
    biva_units = sum(2 * math.prod(biva.latent_shape(i)) for i in range(1, 3)) + 2
    assert units == biva_units == 22
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
    model.initialize(x)
    assert model(x).kl.shape == (3, 5)


def test_doubled_depth_keeps_conv_latent_resolutions():
    base = small(latent_type="conv", latent_kernel=3, input_shape=(3, 8, 8),
                 likelihood="discretized_logistic", n_mix=2, filters=(8,))
    deep = doubled_depth(base)
    biva = HierarchicalVAE(base)
    model = HierarchicalVAE(deep)
    assert [model.latent_shape(i) for i in range(1, 6)] == [
        biva.latent_shape(1), biva.latent_shape(1), biva.latent_shape(2), biva.latent_shape(2),
        biva.latent_shape(3)]


@pytest.mark.parametrize("variant", list(ABLATION_VARIANTS))
def test_each_ablation_variant_builds_what_it_names(variant):
    cfg = ablation_model(small(), variant)
    model = build_hierarchy(cfg)
    expected = {"vae": ("vae", 3), "lvae": ("lvae", 3), "lvae+": ("lvae+", 3),
                "lvae+2l-1": ("lvae+", 5), "biva": ("biva", 3), "vdvae": ("vdvae", 3),
                "nvae": ("nvae", 3), "nvae+flows": ("nvae", 3)}[variant]
    assert (cfg.variant, model.n_layers) == expected
    assert (cfg.posterior_flows if cfg.topdown else 0) == (2 if variant == "nvae+flows" else 0)
    if variant == "nvae+flows":   # the NVAE-style model of the same base, plus its flows
        assert replace(cfg, posterior_flows=0) == ablation_model(small(), "nvae")


def test_topdown_variants_have_the_base_hierarchys_shape():
    """One latent block per base layer at that layer's resolution; dense latents become
    ceil(n / r^2) channels; the width is EQUAL_COST_WIDTH x the widest stage."""
    base = small()                                    # dense 6, 4, 2 at sides 4, 4, 2
    for family, factor in (("vdvae", 3), ("nvae", 1)):
        cfg = ablation_model(base, family)
        assert cfg.spec == "4x2,2x1" and cfg.latents == (1, 1, 1)
        assert cfg.filters == (16 * factor,)
        model = build_hierarchy(cfg)
        assert [model.latent_shape(i) for i in (1, 2, 3)] == [(1, 4, 4), (1, 4, 4), (1, 2, 2)]
    conv = ablation_model(preset("natural32-cpu"), "nvae")
    assert conv.spec == "16x3,8x2,4x1" and conv.latents == (16,) * 6
    # A config with its own spec keeps it.
    own = ablation_model(as_variant(base, "vdvae", spec="8x1,2x2", latents=(3,),
                                    filters=(5,)), "nvae")
    assert (own.variant, own.spec, own.latents, own.filters) == ("nvae", "8x1,2x2", (3,), (5,))


def test_spectral_regularization_goes_to_the_nvae_runs_only():
    train = TrainConfig()
    assert ablation_train(train, "nvae").spectral_reg == NVAE_SPECTRAL_REG
    assert ablation_train(replace(train, spectral_reg=0.1), "nvae").spectral_reg == 0.1
    assert ablation_train(replace(train, spectral_reg=0.1), "vdvae").spectral_reg == 0.1
    for v in ("vae", "lvae", "lvae+", "lvae+2l-1", "biva"):
        assert ablation_train(replace(train, spectral_reg=0.1), v).spectral_reg == 0.0


def test_unknown_variant_is_refused_by_name():
    with pytest.raises(ValueError, match="lvae-"):
        plan_runs("out", ["lvae-"], [0])
    with pytest.raises(ValueError, match="variant 'nvae2'"):
        ablation_model(small(), "nvae2")


def test_runs_are_planned_seed_by_seed(tmp_path):
    runs = plan_runs(tmp_path, ["vae", "biva"], [3, 4])
    assert [(r.variant, r.seed) for r in runs] == [("vae", 3), ("biva", 3), ("vae", 4),
                                                   ("biva", 4)]
    assert runs[1].run_dir == tmp_path / "biva" / "seed3"


def test_shared_biva_prior_is_one_gaussian_for_both_parts():
    sep, shared = HierarchicalVAE(small()), HierarchicalVAE(small(biva_prior="shared"))
    # The shared model's prior heads emit one (mu, sigma) per layer instead of two.
    def n_prior(model):
        return sum(p.numel() for layer in model.td_layers[1:]
                   for p in layer.prior_head.parameters())

    assert n_prior(shared) < n_prior(sep)
    d = torch.randn(2, 8, 4, 4)
    p_bu, p_td = shared.td_layers[1].prior(d)
    assert torch.equal(p_bu.mu, p_td.mu) and torch.equal(p_bu.sigma, p_td.sigma)
    q_bu, q_td = sep.td_layers[1].prior(d)
    assert not torch.equal(q_bu.mu, q_td.mu)
    # LVAE+ has one group a layer whatever the option says.
    lvae_plus = HierarchicalVAE(small(variant="lvae+", biva_prior="shared"))
    assert len(lvae_plus.td_layers[1].prior(d)) == 1
    with pytest.raises(ValueError, match="model.biva_prior"):
        small(biva_prior="tied").validate()


MACHINE = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0", "load_1min": 2.1}


def _fake_result(variant, seed, l1, lk, cpu, curve_elbo, kl=(1.0, 0.5), machine=MACHINE,
                 budget=0.0):
    n = len(curve_elbo)
    return {"variant": variant, "seed": seed, "dataset": "d", "kind": "8bit", "dims": 100,
            "machine": machine, "budget": {"steps": 10 * n, "max_cpu_minutes": budget},
            "params": 1000, "stochastic_layers": 2, "steps": 10 * n, "cpu_minutes": cpu,
            "test": {"n_examples": 5, "k": 4, "L_1": l1, "L_4": lk,
                     "L_1_bpd": -l1 / (100 * math.log(2)), "L_4_bpd": -lk / (100 * math.log(2))},
            "layers": [{"group": f"z{i + 1}", "layer": i + 1, "kl": v, "active": 2, "dims": 4,
                        "active_fraction": 0.5} for i, v in enumerate(kl)],
            "curve": {"step": [10 * (i + 1) for i in range(n)],
                      "cpu_minutes": [cpu * (i + 1) / n for i in range(n)],
                      "valid_elbo": curve_elbo, "valid_bpd": [0.0] * n}}


def _costs(**per_step) -> dict:
    return {"machine": MACHINE, "variants": {v.replace("_", "+"): {"cpu_s_per_step": c}
                                             for v, c in per_step.items()}}


def test_summary_means_spreads_and_equal_compute_by_hand():
    results = [_fake_result("lvae", 0, -100.0, -98.0, 2.0, [-120.0, -110.0]),
               _fake_result("lvae", 1, -104.0, -100.0, 2.0, [-121.0, -111.0]),
               _fake_result("biva", 0, -90.0, -89.0, 4.0, [-130.0, -105.0, -95.0, -92.0])]
    # An LVAE step costs 1.0 CPU-s, a BIVA step 1.6: the budget is the runs' 20 steps of the
    # cheapest measured variant (20 CPU-s); BIVA reaches step 12.5 on it.
    s = summarize(results, ["vae", "lvae", "biva"], _costs(lvae=1.0, biva=1.6))
    assert [r["variant"] for r in s["rows"]] == ["lvae", "biva"]   # vae: no result, no row
    lvae, biva = s["rows"]
    assert lvae["test_L_1_mean"] == pytest.approx(-102.0)
    assert lvae["test_L_1_std"] == pytest.approx(math.sqrt(8.0))   # sample std of -100, -104
    assert lvae["test_L_4_mean"] == pytest.approx(-99.0)
    assert biva["test_L_1_std"] is None                            # one seed: no spread
    assert s["equal_compute"]["cpu_s"] == pytest.approx(20.0)
    assert s["equal_compute"]["reference"] == "lvae"
    assert biva["equal_compute_step"] == pytest.approx(12.5)
    # Between BIVA's validations at step 10 (-130) and 20 (-105): -130 + 0.25 * 25.
    assert biva["valid_elbo_at_equal_compute"] == [pytest.approx(-123.75)]
    assert lvae["valid_elbo_at_equal_compute_mean"] == pytest.approx(-110.5)
    assert biva["valid_bpd_at_equal_compute_mean"] == pytest.approx(
        123.75 / (100 * math.log(2)))
    assert biva["cpu_s_per_step"] == 1.6
    fig = {(f["variant"], f["group"]): f for f in s["kl_per_layer"]}
    assert fig[("lvae", "z2")]["kl"] == [0.5, 0.5] and fig[("lvae", "z1")]["kl_mean"] == 1.0
    md = table_markdown(s)
    assert "| `biva` | 0.00M | 1 | 40 | 1600 |" in md and "(step 12)" in md


def test_without_step_costs_there_is_no_equal_compute_column():
    """Accumulated CPU-minutes never stand in for paired step costs (issue 40)."""
    results = [_fake_result("lvae", 0, -100.0, -98.0, 2.0, [-120.0, -110.0]),
               _fake_result("biva", 0, -90.0, -89.0, 4.0, [-130.0, -105.0, -95.0, -92.0])]
    s = summarize(results, ["lvae", "biva"])
    assert "not measured" in s["equal_compute"]["basis"]
    assert all(r["valid_elbo_at_equal_compute"] == [None] for r in s["rows"])
    assert "equal compute: not measured" in table_markdown(s)


def test_the_value_at_a_step_is_interpolated_between_validations_by_hand():
    """At step 25, between validations of -3 (20) and -1 (30): -2, not the -3 of the last
    validation before it (issue 40); never extrapolated past the run's end."""
    curve = {"step": [10, 20, 30], "valid_elbo": [-5.0, -3.0, -1.0]}
    assert value_at_step(curve, 25) == pytest.approx(-2.0)
    assert value_at_step(curve, 20) == -3.0
    assert value_at_step(curve, 5) is None
    assert value_at_step(curve, 35) is None
    # A curve that falls after its best: the best before the budget stands.
    falling = {"step": [10, 20, 30], "valid_elbo": [-5.0, -1.0, -9.0]}
    assert value_at_step(falling, 25) == -1.0


def test_cpu_minutes_of_different_machines_are_never_compared():
    other = {**MACHINE, "cpu": "Intel Xeon", "cores": 16}
    results = [_fake_result("lvae", 0, -100.0, -98.0, 2.0, [-120.0, -110.0]),
               _fake_result("biva", 0, -90.0, -89.0, 4.0, [-130.0, -105.0, -95.0, -92.0],
                            machine=other)]
    s = summarize(results, ["lvae", "biva"])
    assert not s["cpu_minutes_comparable"]
    assert all(r["cpu_minutes"] is None for r in s["rows"])
    # A run without a machine record is not assumed to match one.
    results[1]["machine"] = None
    assert summarize(results, ["lvae", "biva"])["rows"][0]["cpu_minutes"] is None
    results[1]["machine"] = MACHINE
    assert summarize(results, ["lvae", "biva"])["rows"][1]["cpu_minutes"] == 4.0


def test_the_equal_compute_cut_off_does_not_move_with_the_variants_shown():
    """The budget is fixed by the measured variants, not by those in the table: dropping the
    cheapest variant's runs from the table leaves every other variant's step where it was."""
    runs = [_fake_result("lvae", 0, -100.0, -98.0, 3.0, [-120.0, -110.0, -108.0]),
            _fake_result("biva", 0, -90.0, -89.0, 3.0, [-130.0, -105.0, -95.0]),
            _fake_result("vae", 0, -95.0, -94.0, 1.5, [-140.0, -135.0, -133.0])]
    costs = _costs(vae=0.5, lvae=1.0, biva=1.5)
    both = summarize(runs, ["lvae", "biva", "vae"], costs)
    one = summarize(runs[:2], ["lvae", "biva"], costs)
    assert both["equal_compute"]["cpu_s"] == one["equal_compute"]["cpu_s"] == 15.0
    assert [r["equal_compute_step"] for r in one["rows"]] == [15.0, 10.0]
    assert equal_compute_steps(costs, 30)["steps"] == {"vae": 30.0, "lvae": 15.0,
                                                       "biva": 10.0}


def test_paired_differences_and_their_interval_by_hand():
    """BIVA minus LVAE+ seed by seed: mean of (-2, -4, -3) = -3, s = 1, t(0.975, 2) = 4.3027:
    [-3 - 2.484, -3 + 2.484], which excludes 0; with one seed shared there is no interval."""
    biva = [_fake_result("biva", s, l1, l1, 2.0, [-100.0]) for s, l1 in
            ((0, -90.0), (1, -92.0), (2, -91.0))]
    lvae = [_fake_result("lvae+", s, l1, l1, 2.0, [-100.0]) for s, l1 in
            ((0, -88.0), (1, -88.0), (2, -88.0))]
    s = summarize([*biva, *lvae], ["lvae+", "biva"])
    p = next(x for x in s["paired_differences"] if x["metric"] == "test_L_1_bpd")
    assert p["a"] == "biva" and p["b"] == "lvae+" and p["seeds"] == [0, 1, 2]
    # In bits/dim (lower is better) the sign flips: -L / (D ln 2).
    scale = 1 / (100 * math.log(2))
    assert p["differences"] == pytest.approx([2 * scale, 4 * scale, 3 * scale])
    half = 4.302653 * 1.0 / math.sqrt(3) * scale
    assert p["ci95"] == pytest.approx([3 * scale - half, 3 * scale + half], rel=1e-5)
    assert p["excludes_zero"]
    assert "excludes 0" in table_markdown(s)
    one = summarize([biva[0], lvae[0]], ["lvae+", "biva"])
    assert all(x["ci95"] is None and not x["excludes_zero"] for x in one["paired_differences"])


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    args = ["ablation", "--config", "digits", "--out", str(out), "--variants", "lvae,biva,nvae",
            "--seeds", "0", "--steps", "6", "--samples", "3", "--eval-examples", "40"]
    for s in ("train.eval_every=1", "train.checkpoint_every=3", "train.log_every=3",
              "train.finetune_steps=0", "model.filters=[8]", "model.blocks=1",
              "train.batch_size=16"):
        args += ["--set", s]
    assert main(args) == 0
    return out, args


def test_ablation_command_writes_table_figure_and_curves(ablation_dir):
    out, _ = ablation_dir
    for name in ("table.json", "table.md", "kl_per_layer.json", "kl_per_layer.png",
                 "curves.png"):
        assert (out / name).is_file(), name
    table = json.loads((out / "table.json").read_text())
    assert table["k"] == 3 and table["n_test"] == 40 and table["units"] == "nats"
    rows = {r["variant"]: r for r in table["rows"]}
    assert set(rows) == {"lvae", "biva", "nvae"}
    for r in rows.values():
        assert r["steps"] == 6 and r["seeds"] == [0] and r["params"] > 0
        assert r["cpu_minutes"] > 0          # one machine: the CPU time of each run is shown
        for key in ("test_L_1_mean", "test_L_3_mean"):
            assert math.isfinite(r[key]), key
        assert r["test_L_3_mean"] >= r["test_L_1_mean"] - 1.0
        assert r["valid_elbo_at_equal_compute"] == [None]    # no step costs measured yet
    assert all(len(run["curve"]["step"]) == 6 for run in table["runs"])  # kept for re-summaries
    groups = {(f["variant"], f["group"]) for f in table["kl_per_layer"]}
    assert ("biva", "z1_bu") in groups and ("biva", "z1_td") in groups
    assert ("lvae", "z3") in groups and ("lvae", "z1_bu") not in groups
    assert ("nvae", "z3") in groups
    assert len(table["runs"]) == 3
    md = (out / "table.md").read_text()
    assert "| `biva` |" in md and "z1_td" in md


def test_ablation_command_resumes_without_retraining(ablation_dir):
    out, args = ablation_dir
    result = out / "biva" / "seed0" / "ablation_result.json"
    before = result.stat().st_mtime_ns
    assert main(args) == 0
    assert result.stat().st_mtime_ns == before
    # A longer budget trains the same runs further instead of starting over.
    longer = [a if a != "6" else "9" for a in args]
    assert main(longer) == 0
    res = json.loads(result.read_text())
    assert res["steps"] == 9 and res["budget"]["steps"] == 9
    steps = [json.loads(line)["step"] for line in
             (out / "biva" / "seed0" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "valid"]
    assert steps == list(range(1, 10))   # one record a step, none repeated


def test_step_costs_are_timed_in_turns_in_two_processes_and_give_the_equal_compute_column(
        ablation_dir):
    """--step-costs times every variant in turns in one process per core (--jobs 2, real
    processes), writes step_costs.json, and the summary then reads each variant's value at
    the step the compute budget buys it (interpolated on its own curve)."""
    out, args = ablation_dir
    assert main([*args, "--step-costs", "--step-cost-steps", "2", "--step-cost-turns", "2",
                 "--jobs", "2"]) == 0
    costs = json.loads((out / "step_costs.json").read_text())
    assert set(costs["variants"]) == {"lvae", "biva", "nvae"}
    assert costs["cores_used"] == 2 and costs["machine"]["cpu"]
    for v, c in costs["variants"].items():
        assert len(c["turns"]) == 4, v                         # 2 processes x 2 turns
        assert c["cpu_s_per_step"] == pytest.approx(
            float(np.median([t[0] for t in c["turns"]]))) and c["cpu_s_per_step"] > 0
    assert main([*args, "--summary-only"]) == 0
    table = json.loads((out / "table.json").read_text())
    eq = table["equal_compute"]
    cheapest = min(costs["variants"], key=lambda v: costs["variants"][v]["cpu_s_per_step"])
    assert eq["reference"] == cheapest
    for r in table["rows"]:
        step = eq["cpu_s"] / costs["variants"][r["variant"]]["cpu_s_per_step"]
        assert r["equal_compute_step"] == pytest.approx(step)
        run = next(x for x in table["runs"] if x["variant"] == r["variant"])
        assert r["valid_elbo_at_equal_compute"] == [value_at_step(run["curve"], step)]
    rows = {r["variant"]: r for r in table["rows"]}
    assert rows[cheapest]["valid_elbo_at_equal_compute"][0] is not None
    assert "steps of " + cheapest in (out / "table.md").read_text()


def test_per_layer_kl_and_active_units_match_a_hand_computation(ablation_dir):
    out, _ = ablation_dir
    from biva.data import evaluation_split, load_run_data, to_model_input
    from biva.runs.loading import load_trained
    from biva.utils.rng import seeded_eval

    run = AblationRun("biva", 0, out / "biva" / "seed0")
    res = evaluate_run_for_ablation(run, AblationBudget(steps=9, k=1, eval_examples=40))
    model, cfg, _ = load_trained(run.run_dir)
    data = load_run_data(cfg)
    x = to_model_input(evaluation_split(data, "test").images[:40], data.kind, cfg.model.bits)
    with seeded_eval(model, 0):
        o = model(x)
    # Sum of the per-group KLs = E[log p(x|z)] - L_1 on the same draws: no group is dropped,
    # doubled or assigned another group's value.
    kl = {row["group"]: row["kl"] for row in res["layers"]}
    assert sum(kl.values()) == pytest.approx(float(o.log_px.mean() - o.elbo.mean()), abs=1e-4)
    for g, i in zip(model.group_names, range(model.n_groups), strict=True):
        assert kl[g] == pytest.approx(float(o.kl[:, i].mean()), abs=1e-4)
    # Active units: numpy's variance of the posterior means over the 40 examples > 0.01.
    with seeded_eval(model, 0):
        posts = model(x).posteriors
    for row in res["layers"]:
        mu = posts[row["group"]].mu.flatten(1).double().numpy()
        assert row["active"] == int((np.var(mu, axis=0, ddof=1) > 0.01).sum())
        assert row["dims"] == mu.shape[1]
        assert row["layer"] == int(row["group"][1])
    assert res["active_units"]["active"] == sum(r["active"] for r in res["layers"])


def test_a_new_run_with_another_recipe_is_refused(ablation_dir, capsys):
    """A shipped config that changed between sessions must not slip a second recipe into one
    table: the new run's differing field is named with both values."""
    out, args = ablation_dir
    changed = [a if a != "lvae,biva,nvae" else "vae" for a in args] + ["--set", "train.lr=0.001"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "train.lr: 0.002 there, 0.001 here" in err
    assert not (out / "vae" / "seed0" / "config.json").exists()


@pytest.mark.parametrize("change, field", [(["--set", "train.lr=0.05"], "train.lr: 0.002 in the "
                                            "run, 0.05 asked"),
                                           (["--set", "model.blocks=2"], "model.blocks: 1 in the "
                                            "run, 2 asked")])
def test_a_changed_recipe_is_refused_for_the_runs_already_there(ablation_dir, capsys, change,
                                                                 field):
    # `--set train.lr=0.05` (or model.blocks=1) on finished runs was ignored and the table
    # re-issued as if for it (issue 41); new runs were already refused.
    out, args = ablation_dir
    table = (out / "table.json").read_bytes()
    assert main(args + change) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings than this command asks for" in err and field in err
    assert (out / "table.json").read_bytes() == table


def test_summaries_of_two_processes_are_written_one_at_a_time_and_say_what_is_missing(
        ablation_dir, tmp_path):
    """Two processes may work on one ablation; each wrote its five summary files one by one
    from the results it had loaded, so a summary of fewer runs could land over a later, fuller
    one, or mix with it (the re-attack). Now a summary waits for the other process's lock,
    loads the results inside it, and lists the runs without a result in its files."""
    import shutil
    import subprocess
    import sys
    import textwrap

    from biva.experiments.ablation import plan_runs, write_summary

    out = tmp_path / "abl"
    shutil.copytree(ablation_dir[0], out)
    nvae = out / "nvae" / "seed0" / "ablation_result.json"
    saved = nvae.read_bytes()
    nvae.unlink()
    runs = plan_runs(out, ["lvae", "biva", "nvae"], [0])
    write_summary(out, runs, ["lvae", "biva", "nvae"])
    table = json.loads((out / "table.json").read_text())
    assert table["missing_runs"] == [str(out / "nvae" / "seed0")]
    assert {r["variant"] for r in table["rows"]} == {"lvae", "biva"}
    assert "Incomplete: 1 run(s) without a result yet" in (out / "table.md").read_text()
    # A second real process holds the summary's lock while the missing result lands.
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from biva.utils.run_lock import output_lock
        with output_lock(Path({str(out)!r}) / "table"):
            print("held", flush=True)
            time.sleep(3)
            Path({str(nvae)!r}).write_bytes(bytes.fromhex({saved.hex()!r}))
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    write_summary(out, runs, ["lvae", "biva", "nvae"])
    assert holder.wait(timeout=60) == 0
    # Loaded before the lock was free, it would still miss nvae (written at the lock's end).
    table = json.loads((out / "table.json").read_text())
    assert table["missing_runs"] == [] and len(table["rows"]) == 3
    assert "Incomplete" not in (out / "table.md").read_text()
