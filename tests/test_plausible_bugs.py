"""``scripts/plausible_bugs.py N`` applies bug N of the testing guide's table: each patch's
original text must occur exactly once in its file, or the script (and the table's claim that
the bug was tried) has gone stale as the code moved."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_module import load_script

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_script(REPO / "scripts" / "plausible_bugs.py")


def _bugs() -> dict[str, tuple[str, str, str]]:
    return _script().BUGS


@pytest.mark.parametrize("bug", sorted(_bugs()))
def test_each_plausible_bug_applies_at_exactly_one_place(bug):
    path, old, new = _bugs()[bug]
    text = (REPO / path).read_text()
    assert text.count(old) == 1, f"bug {bug}: {old!r} occurs {text.count(old)} times in {path}"
    assert old != new


def test_each_bug_names_a_test_that_exists():
    # `plausible_bugs.py --check` runs these; a renamed or moved test would make it "miss".
    script = _script()
    assert set(script.CAUGHT_BY) == set(script.BUGS)
    for test in script.CAUGHT_BY.values():
        path, _, name = test.partition("::")
        assert f"def {name.partition('[')[0]}(" in (REPO / path).read_text(), test
