"""The documentation cannot rot: the site builds with warnings as errors, every command and
Python example in it and in the README names things that exist, and the README's three
examples run end to end on small real data."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from script_module import load_script

from biva.data.formats import read_idx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def doc_files() -> list[Path]:
    pages = [p for p in DOCS.rglob("*.md")
             if not any(part in ("_build", "results") for part in p.relative_to(DOCS).parts)]
    return [ROOT / "README.md", *sorted(pages)]


def code_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced block in ``language``."""
    blocks, current, start, lang = [], None, 0, None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^(```+)\s*([\w{}-]*)", line)
        if fence and current is None:
            current, start, lang = [], n + 1, fence.group(2)
        elif fence and current is not None:
            if lang == language:
                blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def shell_commands(text: str) -> list[str]:
    """Lines of a shell block with continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def config_fields() -> set[str]:
    import dataclasses

    from biva.config import HierarchyConfig, TopDownConfig
    from biva.config.run import DataConfig, EvalConfig, TrainConfig

    # The model section: the fields of either family (the base's are in both).
    return {f"{s}.{f.name}" for s, cls in (("model", HierarchyConfig), ("model", TopDownConfig),
                                           ("data", DataConfig), ("train", TrainConfig),
                                           ("eval", EvalConfig))
            for f in dataclasses.fields(cls)}


def all_commands() -> list[tuple[str, str]]:
    cmds = []
    for path in doc_files():
        for start, text in code_blocks(path, "bash"):
            for cmd in shell_commands(text):
                cmds.append((f"{path.relative_to(ROOT)}:{start}", cmd))
    return cmds


def test_the_docs_hold_commands_and_examples_to_check():
    """The extraction itself works (a test that finds nothing would pass forever)."""
    assert len(all_commands()) > 60
    assert sum(len(code_blocks(p, "python")) for p in doc_files()) >= 6


def test_every_biva_command_in_the_docs_parses_with_real_options_and_fields():
    """A renamed subcommand, option or config field fails here, naming the page and line."""
    from biva.cli.main import build_parser
    from biva.config.run import shipped_configs

    fields, shipped = config_fields(), set(shipped_configs())
    parser = build_parser()
    problems, checked = [], 0
    for where, cmd in all_commands():
        for part in re.split(r"\s*(?:&&|;|\|)\s*", cmd):
            words = shlex.split(part)
            words = [w for w in words if "=" not in w or not w.split("=")[0].isupper()]
            if words[:1] in (["biva"], [".venv/bin/biva"]):
                checked += 1
                argv = words[1:]
                try:
                    args, extra = parser.parse_known_args(argv)
                except SystemExit:
                    problems.append(f"{where}: {part}: does not parse")
                    continue
                if extra and not all(e.startswith("[") or e == "..." for e in extra):
                    problems.append(f"{where}: {part}: unknown {extra}")
                for item in getattr(args, "overrides", []) or []:
                    key = item.split("=")[0]
                    if key not in fields:
                        problems.append(f"{where}: --set {key}: no such config field")
                config = getattr(args, "config", None)
                if config and "/" not in config and not config.endswith(
                        (".yaml", ".json")) and config not in shipped and config.isidentifier():
                    problems.append(f"{where}: --config {config}: no such shipped config")
            elif words[:1] == ["bash"] and len(words) > 1 and words[1].startswith("scripts/"):
                if not (ROOT / words[1]).is_file():
                    problems.append(f"{where}: {words[1]}: no such script")
            elif words[:1] in (["python"], ["python3"]) and len(words) > 1 and \
                    words[1].startswith(("benchmarks/", "scripts/")):
                if not (ROOT / words[1]).is_file():
                    problems.append(f"{where}: {words[1]}: no such file")
    assert checked > 25
    assert not problems, "\n".join(problems)


def _resolve(module: str, names: list[str], where: str, problems: list[str]) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        problems.append(f"{where}: import {module}: {err}")
        return
    for name in names:
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                problems.append(f"{where}: {module} has no {name}")


def test_every_python_example_compiles_and_names_what_exists():
    """Imports from biva resolve, and attributes taken of an imported biva module (e.g.
    ``gen.samples_at_temperatures``) exist: a renamed function fails here."""
    problems, checked = [], 0
    for path in doc_files():
        for start, text in code_blocks(path, "python"):
            where = f"{path.relative_to(ROOT)}:{start}"
            try:
                tree = ast.parse(text)
            except SyntaxError as err:
                problems.append(f"{where}: {err}")
                continue
            checked += 1
            modules: dict[str, str] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("biva"):
                    _resolve(node.module, [a.name for a in node.names], where, problems)
                    for a in node.names:
                        full = f"{node.module}.{a.name}"
                        try:
                            importlib.import_module(full)
                            modules[a.asname or a.name] = full
                        except ImportError:
                            pass
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.startswith("biva"):
                            _resolve(a.name, [], where, problems)
                            modules[a.asname or a.name.split(".")[0]] = (
                                a.name if a.asname else a.name.split(".")[0])
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                        node.value.id in modules:
                    mod = importlib.import_module(modules[node.value.id])
                    if not hasattr(mod, node.attr):
                        problems.append(f"{where}: {modules[node.value.id]} has no {node.attr}")
    assert checked >= 6
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def photo_folders(shared_data_dir, tmp_path_factory):
    """path/to/photos (2 classes x 40 real photos), new_photos (6 others) and new_clothes (6
    Fashion-MNIST test images as PNG files), as the README names them."""
    src = shared_data_dir / "photos32"
    if not src.is_dir():
        pytest.skip("photos32 not found")
    root = tmp_path_factory.mktemp("readme")
    for c in ("airplane", "cat"):
        (root / "path/to/photos" / c).mkdir(parents=True)
        files = sorted((src / c).iterdir())
        for f in files[:40]:
            shutil.copy(f, root / "path/to/photos" / c / f.name)
    (root / "new_photos").mkdir()
    for f in sorted((src / "ship").iterdir())[:6]:
        shutil.copy(f, root / "new_photos" / f.name)
    fashion = shared_data_dir / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    if not fashion.is_file():
        pytest.skip("Fashion-MNIST not found")
    (root / "new_clothes").mkdir()
    for i, image in enumerate(read_idx(fashion, (28, 28))[:6]):
        Image.fromarray(image).save(root / "new_clothes" / f"item{i}.png")
    return root


@pytest.mark.slow
def test_the_readmes_three_examples_run_on_small_real_data(photo_folders):
    """Exactly the README's blocks, in its order, in a folder laid out as they name it; only
    the training budget and K are made small (appended --set / replaced values)."""
    readme = ROOT / "README.md"
    bash = [cmd for _, text in code_blocks(readme, "bash") for cmd in shell_commands(text)]
    train = next(c for c in bash if c.startswith("biva run --data"))
    evaluate = next(c for c in bash if c.startswith("biva evaluate"))
    python = next(text for _, text in code_blocks(readme, "python") if "detector_for_run" in text
                  and "pretrained.load" in text)
    biva = [sys.executable, "-m", "biva.cli.main"]
    small = ["--set", "train.max_cpu_minutes=0", "--set", "train.steps=4",
             "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2",
             "--set", "train.batch_size=8", "--set", "eval.batch_size=8", "--no-progress",
             "--samples", "2", "--threads", "1"]
    run = subprocess.run(biva + shlex.split(train)[1:] + small, cwd=photo_folders,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (photo_folders / "runs/photos/eval_test_k2.json").is_file()
    ev = shlex.split(evaluate)[1:]
    ev[ev.index("--samples") + 1] = "3"
    run = subprocess.run(biva + ev + ["--no-progress", "--threads", "1"], cwd=photo_folders,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (photo_folders / "runs/photos/eval_test_k3.json").is_file()
    code = python + "\nimport numpy as np\n" \
        "for f in (flags, photo_flags, run_flags):\n" \
        "    assert f.shape == (6,) and set(np.unique(f)) <= {-1, 1}\n" \
        "assert images.shape == (6, 1, 28, 28) and int(images.max()) == 1\n" \
        "assert new_photos.shape == (6, 3, 32, 32)\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=photo_folders, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from scratch with warnings as errors; its html folder."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("site") / "html"
    # Without the [source] pages (a quarter of the build): the rest is the site users get.
    res = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q",
                          "-b", "html", str(DOCS), str(out)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "BIVA_DOCS_SOURCE_PAGES": "0"})
    assert res.returncode == 0, res.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(site):
    """A broken cross-reference, a public name without a docstring or an unknown config field
    in the text is a warning, and the build fails on any warning (the fixture)."""
    for page in ("index.html", "getting-started.html", "reference/api.html",
                 "reference/cli.html", "reference/config.html", "guide/models.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli.html").read_text()
    assert "biva ablation" in cli and "--init-from" in cli
    config = (site / "reference/config.html").read_text()
    assert "train.init_from" in config and "model.biva_prior" in config
    index = (site / "reference/api.html").read_text()
    assert "api/biva.models.hierarchy.html" in index          # one page a module, linked
    hierarchy = (site / "reference/api/biva.models.hierarchy.html").read_text()
    bounds = (site / "reference/api/biva.objectives.importance.html").read_text()
    assert "HierarchicalVAE" in hierarchy and "importance_weighted_bound" in bounds


def test_an_unknown_config_field_or_a_missing_docstring_fails_the_build(tmp_path):
    """The two checks of the docs extension warn (and so fail a -W build)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['myst_parser', 'sphinx.ext.autodoc', 'biva_docs']\n"
        "source_suffix = {'.md': 'markdown'}\n")
    (src / "index.md").write_text("# t\n\n{config}`train.free_bit` and {config}`train.lr`\n")
    mod = tmp_path / "biva_undocumented_mod.py"
    mod.write_text('"""A module."""\n\ndef public(x):\n    return x\n')
    (src / "api.md").write_text("# api\n\n```{eval-rst}\n.. automodule:: biva_undocumented_mod\n"
                                "   :members:\n   :undoc-members:\n```\n")
    (src / "index.md").write_text((src / "index.md").read_text() +
                                  "\n```{toctree}\napi\n```\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-q", "-b", "html", str(src),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert "unknown config field 'train.free_bit'" in res.stderr, res.stderr
    assert "'train.lr'" not in res.stderr
    assert "public name biva_undocumented_mod.public has no docstring" in res.stderr, res.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Loaded before any page script: records JavaScript errors, then checks every stylesheet
# <link> produced a sheet with rules, and writes both into the DOM for --dump-dom.
PROBE = """<script>window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
window.addEventListener("load", function () {
  var missing = [];
  for (const link of document.querySelectorAll('link[rel="stylesheet"]')) {
    var ok = false;
    try { ok = link.sheet !== null && link.sheet.cssRules.length > 0; } catch (err) {}
    if (!ok) missing.push(link.getAttribute("href"));
  }
  var d = document.createElement("div");
  d.id = "site-check";
  d.textContent = JSON.stringify({sheets: document.querySelectorAll(
      'link[rel="stylesheet"]').length, missing: missing, errors: window.__errors});
  document.body.appendChild(d);
});</script>"""


def _browser_check(exe: str, page: Path, tmp: Path) -> dict:
    import json

    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1),
                     encoding="utf-8")
    res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync",
                          "--allow-file-access-from-files", f"--user-data-dir={tmp / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    probe.unlink()
    match = re.search(r'id="site-check">(\{.*?\})<', res.stdout)
    assert match, f"no probe result (rc {res.returncode}): {res.stderr[-2000:]}"
    found = json.loads(match.group(1).replace("&quot;", '"'))
    # The DOM at the end of the time budget: MathJax has typeset every formula or not.
    found["math_rendered"] = res.stdout.count("<mjx-container")
    found["math_raw"] = len(re.findall(r'<span class="math[^"]*">\\\(', res.stdout))
    return found


@pytest.mark.slow   # the whole site is built first (about 85 s of one core)
def test_the_site_loads_in_a_real_browser_with_its_styles_and_no_script_error(site, tmp_path):
    """Headless Chromium opens the front page and a guide page; a missing stylesheet or a
    JavaScript error fails, and a page whose stylesheet was removed is caught (the probe cannot
    pass vacuously). With BIVA_UPDATE_SCREENSHOTS=1 the screenshots replace those committed in
    docs/screenshots/."""
    import os

    from PIL import Image

    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium); .ci/run installs it")
    shots = DOCS / "screenshots" if os.environ.get("BIVA_UPDATE_SCREENSHOTS") else None
    for page, name in (("index.html", "front_page.png"),
                       ("guide/anomaly-detection.html", "guide_anomaly_detection.png")):
        found = _browser_check(exe, site / page, tmp_path)
        assert found["sheets"] >= 2 and found["missing"] == [] and found["errors"] == [], found
        if page.startswith("guide/"):
            # L^{>k} and LLR^{>k} rendered as maths, offline (issue 42), none left raw.
            assert found["math_rendered"] > 10 and found["math_raw"] == 0, found
        shot = tmp_path / name
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                        f"--screenshot={shot}", (site / page).as_uri()],
                       capture_output=True, text=True, timeout=120)
        img = Image.open(shot).convert("L")
        assert img.size == (1280, 900) and img.getextrema()[1] - img.getextrema()[0] > 100
        if shots is not None:
            shots.mkdir(exist_ok=True)
            shutil.copy(shot, shots / name)
    # The control: without Furo's stylesheet the same check reports it missing.
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    for css in (broken / "_static" / "styles").glob("furo.css"):
        css.unlink()
    found = _browser_check(exe, broken / "index.html", tmp_path)
    assert any("furo.css" in m for m in found["missing"]), found
    # ... and without the MathJax it serves, no formula is rendered.
    shutil.rmtree(broken / "_static" / "mathjax")
    found = _browser_check(exe, broken / "guide" / "anomaly-detection.html", tmp_path)
    assert found["math_rendered"] == 0 and found["math_raw"] > 10, found


def test_every_library_module_has_its_reference_page_listed_by_layer(tmp_path):
    """One page a module (issue 42: the reference was one 1.37 MB page), each listed in the
    index; the generator keeps the index as it is (a module added without a page fails)."""
    import pkgutil

    import biva

    root = Path(__file__).resolve().parents[1]
    modules = {m.name for m in pkgutil.walk_packages(biva.__path__, "biva.")} | {"biva"}
    modules = {m for m in modules if not m.startswith("biva.cli")}   # the CLI reference
    pages = {p.stem for p in (root / "docs" / "reference" / "api").glob("*.md")}
    assert modules == pages
    index = (root / "docs" / "reference" / "api.md").read_text()
    assert {m for m in modules if f"api/{m}\n" in index} == modules
    api_pages = load_script(root / "scripts" / "api_pages.py")
    shutil.copy(root / "docs" / "reference" / "api.md", tmp_path / "api.md")
    api_pages.split(tmp_path / "api.md", tmp_path / "api")
    assert (tmp_path / "api.md").read_text() == index
