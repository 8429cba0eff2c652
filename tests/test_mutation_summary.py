"""The mutation-run summary: its per-file counts and the survivor reset that a retest relies on
(a reset that forgot a survivor, or reset a killed mutant, would misreport the table in
docs/guide/mutation-testing.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "mutation_summary.py"

CODES = {
    "biva.a.x_f__mutmut_1": 1,  # killed
    "biva.a.x_f__mutmut_2": 0,  # survived
    "biva.a.x_g__mutmut_1": 0,  # survived
    "biva.a.x_g__mutmut_2": 33,  # no test
    "biva.a.x_g__mutmut_3": -11,  # a signal
    "biva.a.x_g__mutmut_4": None,  # not run
}


def _summary(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _meta(root: Path) -> Path:
    meta = root / "src" / "biva" / "a.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": CODES, "other": 1}))
    return meta


def test_summary_counts_each_verdict_and_lists_the_survivors(tmp_path):
    _meta(tmp_path)
    out = _summary(str(tmp_path))
    assert "| src/biva/a.py | 6 | 1 | 2 | 1 | 1 | 1 |" in out
    assert out.split("survivors:")[1].split() == ["biva.a.x_f__mutmut_2", "biva.a.x_g__mutmut_1"]


def test_reset_survivors_forgets_only_the_matching_survivors_and_untested(tmp_path):
    meta = _meta(tmp_path)
    assert _summary(str(tmp_path), "--reset-survivors", "biva.a.x_g*").startswith("2 ")
    data = json.loads(meta.read_text())
    assert data["other"] == 1
    assert data["exit_code_by_key"] == {**CODES, "biva.a.x_g__mutmut_1": None,
                                        "biva.a.x_g__mutmut_2": None}
    assert _summary(str(tmp_path), "--reset-survivors").startswith("1 ")
    assert json.loads(meta.read_text())["exit_code_by_key"]["biva.a.x_f__mutmut_2"] is None
    assert json.loads(meta.read_text())["exit_code_by_key"]["biva.a.x_f__mutmut_1"] == 1
