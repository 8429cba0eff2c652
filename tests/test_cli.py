"""The `biva` command line on a tiny digits run: files written, bounds, figures, clear errors,
and refusal of tampered or pickled checkpoints."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import digits_argv, digits_config

from biva.cli.main import build_parser, main
from biva.config import resolve_config
from biva.config.run import shipped_configs
from biva.runs.evaluate import EvalSettings, default_output, evaluate_run
from biva.utils.checkpoint import list_checkpoints, load_checkpoint
from biva.utils.config_io import load_config_file

STEPS = 12
# The tiny run of tests/tiny.py (tiny.BASE), and this file's own intervals and sizes.
TINY = ["train.finetune_steps=2", "train.log_every=4", "train.eval_every=6",
        "train.checkpoint_every=4", "train.batch_size=32", "eval.n_samples=4"]
GROUPS = ["z1_bu", "z1_td", "z2_bu", "z2_td", "z3"]  # BIVA with L=3 latent layers


def train_argv(run: Path, *extra: str, command: str = "train") -> list[str]:
    argv = [command, *digits_argv(*TINY), "--steps", str(STEPS), "--run-dir", str(run)]
    return [*argv, *extra]


def cli(argv: list[str]) -> int:
    """main(argv), with argparse's SystemExit turned into the exit status."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def assert_clear_error(capsys, argv: list[str], *needles: str) -> str:
    """Exit status 2, one error line naming the problem, no traceback."""
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(train_argv(run)) == 0
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "copy"))


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    lines = path.read_text().splitlines()
    assert lines and all(lines)
    return [json.loads(line, parse_constant=refuse) for line in lines]


# ----------------------------------------------------------------------------- train


def test_train_writes_the_run_directory(trained_run):
    cfg = resolve_config(load_config_file(trained_run / "config.json"))
    assert cfg.name == "digits" and cfg.train.steps == STEPS and cfg.model.filters == (8,)

    records = strict_json_lines(trained_run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [4, 8, 12]
    assert [r["step"] for r in valid] == [6, 12]
    for r in train:
        for key in ("loss", "elbo", "kl", "lr", "grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        assert list(r["kl_groups"]) == GROUPS
        assert all(math.isfinite(v) and v >= 0 for v in r["kl_groups"].values())
        assert r["kl"] == pytest.approx(sum(r["kl_groups"].values()), rel=1e-4)
    assert [r["free_bits"] for r in train] == [cfg.train.free_bits] * 2 + [0.0]  # fine-tuning
    for r in valid:
        assert math.isfinite(r["valid_elbo"]) and r["valid_elbo"] < 0

    # keep_last=2 step checkpoints, plus the best-validation EMA weights.
    assert [p.name for p in list_checkpoints(trained_run)] == ["step_000000008",
                                                                 "step_000000012"]
    tensors, state = load_checkpoint(trained_run / "checkpoints" / "step_000000012")
    assert state["step"] == STEPS and {"model", "ema", "optimizer", "rng"} <= tensors.keys()
    best, best_state = load_checkpoint(trained_run / "checkpoints" / "best")
    assert best_state["valid_elbo"] == max(r["valid_elbo"] for r in valid)
    assert best_state["step"] == max(valid, key=lambda r: r["valid_elbo"])["step"]
    assert best["model"].keys() == tensors["ema"].keys()

    events = list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_writes_bounds(trained_run, capsys):
    argv = ["evaluate", str(trained_run), "--samples", "5", "--n-examples", "20", "--threads", "1"]
    assert main(argv) == 0
    assert "eval_test_k5.json" in capsys.readouterr().out
    res = json.loads((trained_run / "eval_test_k5.json").read_text())
    assert res["n_examples"] == 20 and res["k"] == 5 and res["split"] == "test"
    for key in ("L_1", "L_5", "L_1_bpd", "L_5_bpd", "L_5_stderr"):
        assert math.isfinite(res[key]), key
    assert res["L_1"] < 0 and res["L_5"] < 0
    assert res["L_1_bpd"] == pytest.approx(-res["L_1"] / (64 * math.log(2)))
    assert list(res["kl_per_group"]) == GROUPS
    assert all(math.isfinite(v) and v >= 0 for v in res["kl_per_group"].values())
    assert res["checkpoint"].endswith("best") and "per_example" not in res


def test_evaluate_is_reproducible_for_a_seed(trained_run):
    """The same checkpoint and seed give the same per-example L_1 and L_k (before, two runs
    of `biva evaluate` differed by Monte Carlo noise); another seed gives other draws."""
    def per_example(seed: int) -> dict:
        res = evaluate_run(trained_run, EvalSettings(n_samples=3, n_examples=12,
                                                     per_example=True, seed=seed))
        assert res["seed"] == seed
        return res["per_example"]

    first = per_example(0)
    assert per_example(0) == first
    other = per_example(1)
    assert other["L_1"] != first["L_1"] and other["L_3"] != first["L_3"]


def test_classifier_draws_on_a_run_without_a_classifier_is_refused(trained_run, capsys):
    line = assert_clear_error(capsys, ["evaluate", str(trained_run), "--classifier-draws", "5",
                                       "--samples", "1"], "biva evaluate: error:")
    assert "--classifier-draws 5" in line and "not a semi-supervised run" in line


def test_evaluate_defaults_come_from_the_runs_eval_config(trained_run):
    # The tiny config sets eval.n_samples=4: without n_samples, evaluate uses it.
    settings = EvalSettings(n_examples=10, split="valid", per_example=True)
    res = evaluate_run(trained_run, settings)
    assert res["k"] == 4 and math.isfinite(res["L_4"]) and res["n_examples"] == 10
    assert len(res["per_example"]["L_4"]) == 10
    assert default_output(trained_run, settings) == trained_run / "eval_valid_k4.json"


def test_evaluate_prior_layers_writes_its_own_file(trained_run):
    settings = EvalSettings(n_samples=2, prior_layers=1, n_examples=8, split="train")
    res = evaluate_run(trained_run, settings)
    assert res["prior_layers"] == 1 and math.isfinite(res["L_2"])
    assert default_output(trained_run, settings) == trained_run / "eval_train_k2_prior1.json"


# ----------------------------------------------------------------------------- sample and run


def test_sample_writes_one_row_per_temperature(trained_run, capsys):
    assert main(["sample", str(trained_run), "-n", "4", "--temperature", "1.0,0.5"]) == 0
    path = trained_run / "figures" / "samples.png"
    assert str(path) in capsys.readouterr().out
    with Image.open(path) as img:
        img.load()
        width, height = img.size
        pixels = np.asarray(img)
    assert width > 0 and height > 0
    # 4 columns and 2 rows of 8x8 images with 1-pixel borders, upscaled by one integer factor.
    assert width * (2 * 9 + 1) == height * (4 * 9 + 1)
    assert pixels.min() < pixels.max()


def test_run_trains_evaluates_and_draws(tmp_path, capsys):
    run = tmp_path / "run"
    argv = train_argv(run, "--samples", "3", "--eval-examples", "20", command="run")
    assert main(argv) == 0
    out = capsys.readouterr().out
    res = json.loads((run / "eval_test_k3.json").read_text())
    assert res["n_examples"] == 20 and math.isfinite(res["L_1"]) and math.isfinite(res["L_3"])
    assert list(res["kl_per_group"]) == GROUPS
    for name in ("samples", "samples_temperatures", "reconstructions", "training_curves"):
        path = run / "figures" / f"{name}.png"
        assert str(path) in out
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0


# ----------------------------------------------------------------------------- help


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_the_commands(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "sample", "run", "download", "configs"):
        assert name in out
    for name in _subparsers():
        assert name in out


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_command_help_documents_every_option(command, capsys):
    assert cli([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    for action in _subparsers()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS and type(action).__name__ == "Renamed":
            continue  # an old spelling kept for one release, hidden (test_architecture.py)
        if action.help == argparse.SUPPRESS and action.dest == "worker":
            continue  # biva ablation's own worker processes: not an option for users
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {name}: no help"
        if action.option_strings:
            assert all(opt in out for opt in action.option_strings), name
        words = action.help.split("%(")[0].split()[:3]
        assert " ".join(words) in out, f"{command} {name}: help text not shown"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("sets", "needles"), [
    (["model.latents=[4,-1,2]"], ["model.latents[1]"]),
    (["train.nope=1"], ["train.nope", "unknown"]),
    (["model.strides=[3,1,1]"], ["model.strides", "divisible"]),
    (["model.input_shape=[1,28,28]"], ["(1, 8, 8)", "(1, 28, 28)", "model.input_shape"]),
    (["train.batch_size=0"], ["train.batch_size"]),
])
def test_bad_config_values_are_clear_errors(sets, needles, tmp_path, capsys):
    argv = train_argv(tmp_path / "run")
    for s in sets:
        argv += ["--set", s]
    assert_clear_error(capsys, argv, "biva train: error:", *needles)
    assert not list_checkpoints(tmp_path / "run")


def test_unknown_config_lists_the_shipped_ones(tmp_path, capsys):
    line = assert_clear_error(capsys, ["train", "--config", "no_such_config", "--run-dir",
                                       str(tmp_path / "run")], "no_such_config")
    assert "digits" in shipped_configs()
    for name in shipped_configs():
        assert name in line


def test_evaluate_a_missing_run_dir(capsys):
    assert_clear_error(capsys, ["evaluate", "/nonexistent/run"], "biva evaluate: error:",
                       "/nonexistent/run")


def test_train_refuses_a_run_dir_with_checkpoints(run_copy, capsys):
    config = (run_copy / "config.json").read_bytes()
    metrics = (run_copy / "metrics.jsonl").read_bytes()
    assert_clear_error(capsys, train_argv(run_copy), "already holds checkpoints", "--resume")
    assert (run_copy / "config.json").read_bytes() == config
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics
    assert len(list_checkpoints(run_copy)) == 2


def test_resume_refuses_options_it_would_ignore(run_copy, capsys):
    config = (run_copy / "config.json").read_bytes()
    assert_clear_error(capsys, ["train", "--resume", str(run_copy), "--seed", "3",
                                "--amp", "none"], "--resume", "--seed", "--amp")
    # --set may only grow the budget; any other field names itself and the allowed ones.
    assert_clear_error(capsys, ["train", "--resume", str(run_copy), "--steps", "100",
                                "--set", "train.lr=1"], "config.json", "'train.lr'",
                       "train.max_cpu_minutes")
    assert_clear_error(capsys, ["train", "--resume", str(run_copy), "--set",
                                "train.steps=1"], "train.finetune_steps")
    assert (run_copy / "config.json").read_bytes() == config


def test_resume_trains_a_finished_run_further_with_a_larger_budget(run_copy, capsys):
    """A finished run (step STEPS) resumed with --steps / train.max_cpu_minutes continues from
    its last checkpoint, and its config.json records the new budget."""
    capsys.readouterr()
    assert cli(["train", "--resume", str(run_copy), "--steps", str(STEPS + 4), "--set",
                "train.max_cpu_minutes=30"]) == 0
    out = capsys.readouterr().out
    assert f"train.steps: {STEPS} -> {STEPS + 4}" in out
    assert "train.max_cpu_minutes: 0.0 -> 30.0" in out
    saved = json.loads((run_copy / "config.json").read_text())["train"]
    assert saved["steps"] == STEPS + 4 and saved["max_cpu_minutes"] == 30.0
    steps = [r["step"] for r in strict_json_lines(run_copy / "metrics.jsonl")
             if r.get("kind") == "train"]
    assert steps == sorted(steps) and steps[-1] == STEPS + 4
    assert list_checkpoints(run_copy)[-1].name == f"step_{STEPS + 4:09d}"


@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN", "--samples", "0"],
    ["evaluate", "RUN", "--n-examples", "-1"],
    ["evaluate", "RUN", "--batch-size", "0"],
    ["sample", "RUN", "-n", "0"],
    ["run", "--samples", "zero"],
    # `biva predict --batch-size -3` wrote an empty predictions file with exit 0, and
    # `--n-examples -2` predicted 3 of 5 images (issue 41).
    ["predict", "RUN", "--data", "digits", "--batch-size", "-3"],
    ["predict", "RUN", "--data", "digits", "--n-examples", "-2"],
])
def test_bad_numeric_options_are_refused_by_the_parser(argv, trained_run, capsys):
    argv = [str(trained_run) if a == "RUN" else a for a in argv]
    line = assert_clear_error(capsys, argv, "error: argument")
    assert argv[-2] in line


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("where", ["header", "data"])
def test_tampered_checkpoint_is_refused(run_copy, where, capsys):
    path = run_copy / "checkpoints" / "best" / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    index = 8 + header_len // 2 if where == "header" else len(data) - 3
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    for command in (["evaluate", str(run_copy), "--samples", "1", "--n-examples", "5"],
                    ["sample", str(run_copy), "-n", "2"]):
        assert_clear_error(capsys, command, "tampered or corrupt")
    assert not (run_copy / "eval_test_k1.json").exists()


class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_checkpoint_is_refused_unexecuted(run_copy, tmp_path, zip_format, capsys):
    marker = tmp_path / "pwned"
    path = run_copy / "checkpoints" / "best" / "tensors.safetensors"
    torch.save({"model": _Payload(marker)}, path, _use_new_zipfile_serialization=zip_format)
    assert_clear_error(capsys, ["evaluate", str(run_copy), "--samples", "1"],
                       "biva evaluate: error:",
                       "refusing to load a pickle")
    assert not marker.exists(), "the pickle payload ran"
    # The payload is live: torch.load with weights_only=False would have run it.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- first hour
def test_a_misspelt_option_is_refused_with_a_suggestion_not_abbreviated(trained_run, capsys):
    """`--thread` was silently taken as `--threads`; an unknown option printed the top-level
    usage with no hint."""
    line = assert_clear_error(capsys, ["evaluate", str(trained_run), "--thread", "1"],
                              "--thread", "did you mean --threads?")
    assert line.startswith("biva evaluate: error:")
    assert_clear_error(capsys, ["train", "--stepz", "3"], "did you mean --steps?")


def test_a_misspelt_config_name_gets_a_suggestion(capsys):
    assert_clear_error(capsys, ["train", "--config", "natural32cpu"],
                       "did you mean 'natural32_cpu'?")


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "ood", "report", "predict",
                                     "ablation", "run"])
def test_help_never_prints_a_default_twice(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for chunk in text.split("--")[1:]:
        assert chunk.count("(default") <= 1, chunk


def test_the_end_of_a_run_gives_bits_per_dim_and_the_mean_throughput(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            arr = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    argv = ["train", "--data", str(tmp_path / "imgs"), "--config", "natural32_cpu",
            "--set", "model.input_shape=[3,8,8]", "--set", "model.strides=[2,1,1,1,1,2]",
            "--set", "model.filters=[8]", "--set", "train.batch_size=4", "--steps", "3",
            "--set", "train.eval_every=3", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"best validation ELBO -[\d.]+ nats = [\d.]+ bits/dim", out), out
    assert re.search(r"throughput: [\d.]+ images/s over [\d.]+ min of training", out), out


def test_the_progress_bar_runs_over_a_cpu_budget_not_the_steps(tmp_path, capsys):
    from biva.training import Trainer
    from biva.training.callbacks import ProgressBar

    cfg = digits_config(*TINY, "train.max_cpu_minutes=0.05", "train.progress=true",
                        "train.finetune_steps=0", steps=100000)
    trainer = Trainer(cfg, tmp_path / "run")

    bar = ProgressBar(trainer).bar
    assert bar.total == 3 and bar.unit == "cpu-s"   # 0.05 CPU-minutes, not 100,000 steps
    bar.close()
    trainer.fit()
    assert trainer.step < 100000


def test_evaluate_data_scores_every_image_of_another_folder(trained_run, tmp_path, capsys):
    """`biva evaluate --data` evaluated nothing but the run's own split before (it took a
    15-line script); a class-sorted folder is taken in a seeded random order."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "digits"
    for c in ("zeros", "ones"):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            arr = (np.random.default_rng(i).random((8, 8)) > (0.2 if c == "ones" else 0.8))
            Image.fromarray(arr).convert("1").save(folder / c / f"{i}.png")
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), "--data", str(folder), "--samples", "2",
                 "--n-examples", "6", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_examples"] == 6 and res["split"] == f"all of {folder}"
    assert math.isfinite(res["L_2"])
    # The default file name says what was evaluated.
    assert main(["evaluate", str(trained_run), "--data", str(folder), "--samples", "2",
                 "--no-progress"]) == 0
    assert json.loads((trained_run / "eval_data_digits_k2.json").read_text())[
        "n_examples"] == 20
    capsys.readouterr()
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 100).save(rgb / "x.png")
    assert_clear_error(capsys, ["evaluate", str(trained_run), "--data", str(rgb), "--samples", "2"],
                       "--data", "the model takes (1, 8, 8)")


def test_evaluate_data_takes_a_folder_laid_out_by_split_as_train_does(trained_run, tmp_path):
    """`biva train --data` takes train/ valid/ test/ subfolders (each of class folders);
    `biva evaluate --data` refused a folder holding test/<class>/*.png (issue 42, item 6). It
    now evaluates the requested split's subfolder, and says so."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "mine"
    for c in ("zeros", "ones"):
        (folder / "test" / c).mkdir(parents=True)
        for i in range(4):
            arr = np.random.default_rng(i).random((8, 8)) > 0.5
            Image.fromarray(arr).convert("1").save(folder / "test" / c / f"{i}.png")
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), "--data", str(folder), "--samples", "2",
                 "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_examples"] == 8 and res["split"] == f"all of {folder / 'test'}"


def test_evaluate_names_the_fix_when_the_run_has_no_best_checkpoint(tmp_path, capsys):
    # Stopped at step 2, before its first validation: no checkpoints/best/ (issue 42).
    run = tmp_path / "run"
    assert main(train_argv(run, "--stop-after", "2", "--set", "train.eval_every=1000",
                           "--set", "train.checkpoint_every=1000")) == 0
    assert not (run / "checkpoints" / "best").exists()
    capsys.readouterr()
    line = assert_clear_error(capsys, ["evaluate", str(run), "--samples", "1",
                                       "--n-examples", "4"], "no best-validation checkpoint",
                              "--checkpoint latest")
    assert "step_000000002" in line
    assert not list(run.glob("eval_*.json"))
    assert main(["evaluate", str(run), "--samples", "1", "--n-examples", "4",
                 "--checkpoint", "latest"]) == 0
    res = json.loads((run / "eval_test_k1.json").read_text())
    assert res["step"] == 2 and res["checkpoint"].endswith("step_000000002")
    # Commands that only look at a model say which weights they took.
    assert main(["sample", str(run), "-n", "2"]) == 0
    assert "using its latest, step_000000002" in capsys.readouterr().err


def test_errors_name_the_option_that_fixes_them(tmp_path, capsys):
    # A batch larger than the data: the message gives the override to pass (issue 42).
    line = assert_clear_error(capsys, train_argv(tmp_path / "run", "--set",
                                                 "train.batch_size=5000"),
                              "biva train: error:", "exceeds the")
    n = int(re.search(r"exceeds the (\d+) training", line).group(1))
    assert f"--set train.batch_size={n}" in line
    # Images of two sizes under `biva run`: the option of any command, not `biva train ...`.
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    Image.new("L", (9, 8)).save(folder / "b.png")
    line = assert_clear_error(capsys, ["run", "--data", str(folder), "--run-dir",
                                       str(tmp_path / "r")], "biva run: error:",
                              "--image-size N")
    assert "biva train" not in line


def _printed_json(out: str) -> dict:
    start = out.index("{\n")
    return json.loads(out[start:out.index("\n}", start) + 2])


def test_commands_print_one_way_rounded_and_files_keep_full_precision(trained_run, tmp_path,
                                                                      capsys):
    # evaluate printed 16 digits with "n", run 4 decimals with "test_examples" (issue 42).
    out = tmp_path / "e.json"
    assert main(["evaluate", str(trained_run), "--samples", "2", "--n-examples", "6",
                 "--out", str(out)]) == 0
    shown = _printed_json(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert set(shown) == {"split", "n_examples", "L_1", "L_1_bpd", "L_2", "L_2_bpd",
                          "L_2_stderr"}
    for key in ("L_1", "L_2_bpd"):
        assert shown[key] == round(saved[key], 4) and shown[key] != saved[key]


def test_sample_never_replaces_an_earlier_figure(trained_run, tmp_path, capsys):
    # biva sample wrote over the samples.png of biva run without a word (issue 42).
    run = shutil.copytree(trained_run, tmp_path / "run")
    figures = run / "figures"
    figures.mkdir(exist_ok=True)
    (figures / "samples.png").write_bytes(b"biva run's figure")
    for _ in range(2):
        assert main(["sample", str(run), "-n", "2"]) == 0
    assert (figures / "samples.png").read_bytes() == b"biva run's figure"
    out = capsys.readouterr().out
    assert f"written: {figures / 'samples_2.png'}" in out
    assert f"written: {figures / 'samples_3.png'}" in out
    # An --out the user names is theirs to replace.
    assert main(["sample", str(run), "-n", "2", "--out", str(figures / "samples.png")]) == 0
    assert (figures / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_training_says_why_it_stopped_and_run_announces_its_evaluation(tmp_path, capsys):
    # Nothing was printed when training stopped, and biva run's test evaluation started
    # without a word (issue 42).
    assert main(train_argv(tmp_path / "a")) == 0
    assert f"training stopped at step {STEPS}: train.steps = {STEPS} were reached" in \
        capsys.readouterr().out
    assert main(train_argv(tmp_path / "b", "--set", "train.max_cpu_minutes=0.0001")) == 0
    assert "the CPU budget of 0.0001 min was reached" in capsys.readouterr().out
    assert main(train_argv(tmp_path / "c", "--samples", "3", "--eval-examples", "8",
                           command="run")) == 0
    err = capsys.readouterr().err
    assert "evaluating L_1 and L_3 on the test split (8 images, K = 3" in err


def test_predict_given_a_folder_of_images_where_the_run_goes_names_images(tmp_path, capsys,
                                                                          monkeypatch):
    """A folder passed in RUN_DIR's slot (with --pretrained, or alone) is refused in one line
    that names --images with that folder, not argparse's bare 'one of ... is required'."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.new("L", (28, 28)).save(folder / "0.png")
    for argv in (["predict", "--pretrained", "mnist-100-labels", str(folder)],
                 ["predict", str(folder)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pass --images {folder}" in err[0], err
    assert not (tmp_path / "runs").exists()        # nothing materialized for the refusal
