"""The measured figures of the README and docs/results.md are rendered from the committed JSON
and the shipped cards (issue 40): a page that disagrees with its JSON, by an edit of either,
fails here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from script_module import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def pages():
    return load_script(ROOT / "scripts" / "results_pages.py")


def test_every_generated_fragment_equals_what_its_json_renders(pages):
    assert pages.stale() == []
    for name, (page, _) in pages.FRAGMENTS.items():
        text = (ROOT / page).read_text()
        assert f"<!-- generated: {name} " in text and f"<!-- end generated: {name} -->" in text


def test_a_number_edited_in_the_page_fails_the_check(pages, tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "reaches 0.958 [0.949, 0.965]" in readme
    (tmp_path / "README.md").write_text(readme.replace("reaches 0.958", "reaches 0.959"))
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    for page in {page for page, _ in pages.FRAGMENTS.values()} - {"README.md"}:
        shutil.copy(ROOT / page, tmp_path / page)
    assert pages.stale(tmp_path) == ["README.md: fragment readme-detectors"]


def test_a_card_figure_changed_fails_the_results_page(pages, tmp_path, monkeypatch):
    """docs/results.md reads each shipped model's card: a re-measured card re-renders it."""
    shipped = tmp_path / "pretrained"
    shutil.copytree(ROOT / "src" / "biva" / "pretrained", shipped,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    card_path = shipped / "mnist-100-labels" / "card.json"
    card = json.loads(card_path.read_text())
    shown = card.get("headline") or card["scores"]    # the page shows the headline figures
    error = next(s for s in shown if s["metric"] == "error")
    assert f"test error {100 * error['value']:.1f}%" in (ROOT / "docs" / "results.md").read_text()
    error["value"] += 0.01
    card_path.write_text(json.dumps(card))
    monkeypatch.setattr(pages, "PRETRAINED", shipped)
    assert pages.stale() == ["docs/results.md: fragment results-table",
                             "docs/guide/pretrained.md: fragment pretrained-table"]


def test_the_test_tiers_time_comes_from_its_json(pages, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results,
                    ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    timing = json.loads((results / "ci_time.json").read_text())
    total = timing["runs"][0]["total_s"]
    page = (ROOT / "docs" / "guide" / "testing.md").read_text()
    assert f"{total:.0f} s with the set-up" in page
    timing["runs"][0]["total_s"] += 1
    (results / "ci_time.json").write_text(json.dumps(timing))
    monkeypatch.setattr(pages, "RESULTS", results)
    assert f"{total + 1:.0f} s with the set-up" in pages.testing_ci_time()
    assert pages.stale() == ["docs/guide/testing.md: fragment testing-ci-time"]


def test_a_number_changed_in_the_json_fails_the_check(pages, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results,
                    ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    path = results / "ablation_photos32" / "table.json"
    table = json.loads(path.read_text())
    table["rows"][-1]["test_L_1_bpd_mean"] += 0.01    # BIVA's mean L_1
    path.write_text(json.dumps(table))
    monkeypatch.setattr(pages, "RESULTS", results)
    assert pages.stale() == ["README.md: fragment readme-ablation",
                             "README.md: fragment readme-results",
                             "docs/results.md: fragment results-table",
                             "docs/guide/models.md: fragment models-ablation-photos32"]


def test_markers_missing_from_a_page_are_named(pages, tmp_path):
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="README.md: no '<!-- generated: readme-ablation"):
        pages.render(tmp_path)


def test_an_inline_figure_follows_its_json_and_an_edit_of_either_fails(pages, tmp_path,
                                                                       monkeypatch):
    """A figure in running text names its source (FILE::PATH::SPEC[::TRANSFORM]); the check
    fails on a typed change of the figure and on a change of the JSON, and the renderer
    writes the JSON's value back."""
    (tmp_path / "docs").mkdir()
    ref = "ablation_photos32/table.json::rows/variant=biva/test_L_1_bpd_mean::.3f"
    biva = next(r for r in pages._json("ablation_photos32/table.json")["rows"]
                if r["variant"] == "biva")
    shown = f"{biva['test_L_1_bpd_mean']:.3f}"
    page = f"BIVA reaches <!--f {ref}-->{shown}<!--/f--> bits/dim.\n"
    (tmp_path / "README.md").write_text(page)
    assert pages.stale_inline(tmp_path) == []
    (tmp_path / "README.md").write_text(page.replace(shown, "4.111"))
    assert pages.stale_inline(tmp_path) == [f"README.md: figure {ref} shows 4.111, its source "
                                            f"gives {shown}"]
    assert pages.render_inline(page.replace(shown, "4.111")) == page
    # The transforms: -L in nats, a share as a percentage, seconds as minutes.
    assert pages.figure("ci_time.json::runs/0/total_s::.1f::min") == (
        f"{pages._json('ci_time.json')['runs'][0]['total_s'] / 60:.1f}")
    with pytest.raises(ValueError, match="not found in ablation_photos32/table.json"):
        pages.figure("ablation_photos32/table.json::rows/variant=nope/test_L_1_bpd_mean::.3f")
