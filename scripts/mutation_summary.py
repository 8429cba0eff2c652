"""Per-file mutmut counts (killed / survived / no test / timeout) from a mutants/ folder.

Usage: python scripts/mutation_summary.py MUTANTS_DIR   (prints a Markdown table, then the
surviving mutant names)
       python scripts/mutation_summary.py MUTANTS_DIR --reset-survivors [GLOB...]
           (forget the survivors' verdicts, those whose mutant names match a glob if any are
           given, so that the next `mutmut run` tests them again against new tests)
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit codes per mutant: 1 killed (a test failed), 0 survived, 33 no test covers it,
# 24/36/152 timeout or killed by a signal, None not run yet.
NAMES = {1: "killed", 0: "survived", 33: "no test", None: "not run"}


def main(root: str) -> None:
    rows, survivors = [], []
    for meta in sorted(Path(root).rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if not codes:
            continue
        c = Counter(NAMES.get(v, "timeout/signal") for v in codes.values())
        rows.append((str(meta.relative_to(root))[:-5], c))
        survivors += [k for k, v in codes.items() if v == 0]
    cols = ["killed", "survived", "no test", "timeout/signal", "not run"]
    print("| file | mutants | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    total = Counter()
    for name, c in rows:
        total.update(c)
        print(f"| {name} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in cols) + " |")
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[k]) for k in cols) + " |")
    print("\nsurvivors:")
    for s in survivors:
        print(" ", s)


def reset_survivors(root: str, globs: list[str] | None = None) -> int:
    """Set the verdict of every survivor (and "no test" mutant) whose name matches one of
    `globs` (all when none) back to "not run" in the .meta files; returns the count."""
    n = 0
    for meta in sorted(Path(root).rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        hits = [
            k
            for k, v in codes.items()
            if NAMES.get(v) in ("survived", "no test")
            and (not globs or any(fnmatch.fnmatch(k, g) for g in globs))
        ]
        for k in hits:
            codes[k] = None
        if hits:
            meta.write_text(json.dumps(data))
            n += len(hits)
    return n


if __name__ == "__main__":
    if sys.argv[2:3] == ["--reset-survivors"]:
        n = reset_survivors(sys.argv[1], sys.argv[3:])
        print(f"{n} survivors and untested mutants will be tested again")
    else:
        main(sys.argv[1])
