"""Measured seconds per test file, for the order in which CI hands files to its workers.

pytest-xdist (``--dist loadfile``) gives each worker whole files in collection order; started
longest first, the two workers end together (a long file started last kept one busy alone
for minutes). tests/conftest.py orders the files by tests/durations.json, written here from
a JUnit report of a full run on idle cores.

Usage: pytest ... --junitxml=REPORT.xml; python scripts/test_durations.py REPORT.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def per_file(report: Path) -> dict[str, float]:
    """tests/<file>.py -> the seconds its test cases took (setup and teardown included)."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname is "tests.bounds.test_x" (or with a class name after the module).
        parts = [p for p in module if not p[:1].isupper()]
        totals["/".join(parts) + ".py"] += float(case.get("time", 0.0))
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> int:
    durations = {k: round(v, 1) for k, v in per_file(Path(sys.argv[1])).items()}
    out = ROOT / "tests" / "durations.json"
    out.write_text(json.dumps(durations, indent=1) + "\n")
    print(f"{len(durations)} files, {sum(durations.values()):.0f} s in all -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
