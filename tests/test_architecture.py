"""The architecture and the vocabulary: the layers of the package (the import contract), one
option name per concept across commands, the old spellings kept for one release, and every
committed config still loading."""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from biva.cli.main import build_parser, main
from biva.config import RENAMED_FIELDS, load_run_config, read_run_config
from biva.runs.loading import build_model
from biva.utils.deprecation import BivaDeprecationWarning

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"),
                           "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


def test_the_import_contract_holds_on_the_package():
    run = _lint_imports(ROOT, ROOT / "src")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "1 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("module, line, broken", [
    # training and evaluation sit side by side: neither may import the other.
    ("training/schedule.py", "\n\ndef _x():\n    from biva.evaluation import plots  # noqa\n",
     "biva.training is not allowed to import biva.evaluation"),
    # an upward import at function level, from the bottom layer to the top.
    ("utils/jsonl.py", "\n\ndef _x():\n    from biva.cli import main  # noqa\n",
     "biva.utils is not allowed to import biva.cli"),
])
def test_the_import_contract_fails_on_an_upward_or_sideways_import(tmp_path, module, line,
                                                                  broken):
    # A copy of the package with one bad import: the checker CI runs must refuse it.
    shutil.copytree(ROOT / "src" / "biva", tmp_path / "src" / "biva",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "src" / "biva" / module, "a") as f:
        f.write(line)
    run = _lint_imports(tmp_path, tmp_path / "src")
    assert run.returncode != 0
    assert broken in run.stdout, run.stdout[-3000:]


def test_no_module_imports_a_private_name_of_another_package():
    bad = []
    for path in (ROOT / "src" / "biva").rglob("*.py"):
        package = path.relative_to(ROOT / "src").parts[1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "biva.") and node.module.split(".")[1] != package:
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_")]
                bad += [f"{path.name}: {node.module}" for part in node.module.split(".")
                        if part.startswith("_")][:1]
    assert not bad, bad


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


#: One concept, one option: (the concept, its option, spellings no command may show).
CONCEPTS = [("importance samples K", "--samples", {"--k", "--n-samples"}),
             ("the k of L^{>k}", "--prior-layers", {"--k"}),
             ("z^BU draws of q(y|x)", "--classifier-draws", {"--class-samples"}),
             ("the data folder", "--data-root", {"--root"}),
             ("the models compared", "--variants", {"--models"}),
             ("processes side by side", "--jobs", {"--workers"})]


def test_every_command_spells_each_concept_one_way_in_its_help():
    for name, p in _subparsers().items():
        shown = _visible_options(p)
        for concept, option, old in CONCEPTS:
            assert not shown & old, f"biva {name} --help shows {shown & old} for {concept}; " \
                                    f"the name is {option}"
        text = p.format_help()
        for option in shown:
            assert option in text


def test_evaluate_and_ood_use_the_same_names_for_the_same_concepts():
    subs = _subparsers()
    shared = _visible_options(subs["evaluate"]) & _visible_options(subs["ood"])
    assert {"--samples", "--prior-layers", "--checkpoint", "--n-examples", "--batch-size",
            "--max-batch", "--seed", "--out", "--data-root", "--amp"} <= shared


#: (command and its required arguments, old spelling, new spelling, value, destination).
RENAMED_OPTIONS = [
    (["evaluate", "RUN"], "--k", "--samples", "7", ("samples", 7)),
    (["evaluate", "RUN"], "--class-samples", "--classifier-draws", "3", ("classifier_draws", 3)),
    (["run"], "--k", "--samples", "7", ("samples", 7)),
    (["ablation", "--out", "o", "--steps", "5"], "--k", "--samples", "7", ("samples", 7)),
    (["ood", "RUN"], "--k", "--prior-layers", "0,2", ("prior_layers", "0,2")),
    (["ood", "RUN"], "--n-samples", "--samples", "10", ("samples", 10)),
    (["predict", "RUN", "--data", "mnist"], "--samples", "--classifier-draws", "4",
     ("classifier_draws", 4)),
    (["densities", "--out", "o"], "--models", "--variants", "vae", ("variants", "vae")),
    (["densities", "--out", "o"], "--workers", "--jobs", "3", ("jobs", 3)),
    (["text", "--out", "o"], "--models", "--variants", "lstm", ("variants", "lstm")),
    (["download", "mnist"], "--root", "--data-root", "d", ("data_root", "d")),
]


@pytest.mark.parametrize("base, old, new, value, dest", RENAMED_OPTIONS,
                         ids=[f"{b[0]} {o}" for b, o, *_ in RENAMED_OPTIONS])
def test_an_old_option_spelling_works_once_more_and_names_the_new_one(base, old, new, value,
                                                                       dest):
    parser = build_parser()
    with pytest.warns(BivaDeprecationWarning, match=f"{old} is deprecated; use {new}"):
        args = parser.parse_args([*base, old, value])
    assert getattr(args, dest[0]) == dest[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        assert getattr(parser.parse_args([*base, new, value]), dest[0]) == dest[1]


def test_an_old_option_spelling_is_one_line_on_the_console(capsys):
    # The warning is printed; the command then fails on its missing run as before.
    assert main(["evaluate", "--k", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("warning: biva evaluate: --k is deprecated; use --samples (same meaning; "
                      "--k stops working in biva 0.3)")
    assert err[1].startswith("biva evaluate: error:")


def test_an_old_config_field_loads_as_the_new_one_once_warned(tmp_path):
    assert RENAMED_FIELDS == {"eval.k": "eval.n_samples"}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"eval": {"k": 7}}))
    # A config the user names: read, and one line says the new name.
    with pytest.warns(BivaDeprecationWarning, match=r"eval\.k is deprecated; use eval\.n_samples"):
        assert load_run_config(str(old)).eval.n_samples == 7
    # A run directory's config.json, written by biva: read as it is, without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_run_config(old).eval.n_samples == 7
    with pytest.warns(BivaDeprecationWarning, match=r"--set eval\.k is deprecated"):
        assert load_run_config("digits", ["eval.k=9"]).eval.n_samples == 9
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"eval": {"k": 7, "n_samples": 8}}))
    with pytest.raises(ValueError, match="both eval.k .* and eval.n_samples"):
        read_run_config(both)


def _committed_configs() -> list[Path]:
    return sorted([*(ROOT / "docs" / "results").rglob("config.json"),
                   *(ROOT / "src" / "biva" / "pretrained").glob("*/config.json")])


@pytest.mark.parametrize("path", _committed_configs(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_run_config_loads_and_builds_its_model(path):
    # Written by earlier versions (eval.k and all): still read, silently, and the model built.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = read_run_config(path)
    model = build_model(cfg, path.parent)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cfg.eval.n_samples >= 1


def _long_functions(root: Path, limit: int) -> list[str]:
    """Functions (and methods) of the .py files under ``root`` longer than ``limit`` lines,
    argument-parser definitions (``add_parser``, ``build_parser``) aside."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit and node.name not in ("add_parser", "build_parser"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                                 f"({lines} lines)")
    return found


def test_no_function_of_the_library_is_over_60_lines():
    assert _long_functions(ROOT / "src" / "biva", 60) == []


def test_the_length_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n\ndef add_parser(p):\n{body}\n")
    assert _long_functions(tmp_path, 60) == ["m.py:1 long (61 lines)"]


def test_the_trainer_loop_module_stays_under_300_lines():
    for name in ("trainer.py", "loop.py"):
        lines = (ROOT / "src" / "biva" / "training" / name).read_text().count("\n")
        assert lines < 300, name


def test_the_installed_package_says_what_it_is_and_who_made_it():
    """`pip show biva` had no author; the metadata names the families and the makers."""
    from importlib.metadata import metadata, version

    import biva

    meta = metadata("biva")
    assert meta["Author"] == "the biva developers" and version("biva") == biva.__version__
    assert "NVAE" in meta["Summary"] and "BIVA" in meta["Keywords"]
