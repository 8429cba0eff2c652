"""Re-issue a committed ablation table (``table.json`` / ``table.md``) under the current
summary rules, from the runs it lists and the folder's ``step_costs.json`` (when measured):
for tables whose run directories are gone (their figures are kept as they are).

    python benchmarks/resummarize.py docs/results/ablation_photos32

Runs recorded before curves were kept in ``table.json`` have no validation curve: their
equal-compute column stays empty ("-") even with step costs, and the step costs are shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biva.experiments.ablation import STEP_COSTS_FILE, summarize, table_markdown
from biva.utils.atomic import atomic_write_json, atomic_write_text


def resummarize(folder: Path) -> dict:
    """The folder's table.json summarized again (and table.md written); returns it."""
    old = json.loads((folder / "table.json").read_text())
    costs_path = folder / STEP_COSTS_FILE
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else None
    runs = [{**r, "curve": r.get("curve") or {"step": [], "valid_elbo": []}}
            for r in old["runs"]]
    variants = [row["variant"] for row in old["rows"]]
    summary = {**summarize(runs, variants, costs), "runs": old["runs"],
               "missing_runs": old.get("missing_runs", [])}
    atomic_write_json(folder / "table.json", summary)
    atomic_write_text(folder / "table.md", table_markdown(summary))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders holding a table.json")
    for folder in p.parse_args().folders:
        resummarize(folder)
        print(f"written: {folder / 'table.json'}, {folder / 'table.md'}")


if __name__ == "__main__":
    main()
