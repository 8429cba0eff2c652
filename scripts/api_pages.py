"""Split the Python API reference into one page a module (docs/reference/api/<module>.md) with
docs/reference/api.md as the index, from the module list in api.md's sections.

Usage: python scripts/api_pages.py   (rewrites the pages; run after adding a module to api.md
as a `### `biva.x.y`` heading with its automodule block, or to a layer's list below.)
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"


def split(index: Path = DOCS / "api.md", pages: Path = DOCS / "api") -> list[str]:
    """Rewrite ``index`` as layer headings, each with a toctree of its modules' pages; write
    one page a module. Returns the module names."""
    text = index.read_text()
    modules: list[str] = []
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.extend(["```{toctree}", ":maxdepth: 1", "", *[f"api/{m}" for m in pending],
                        "```", ""])
            pending.clear()

    skip = skip_fence = False
    for line in text.splitlines():
        heading = re.fullmatch(r"### `(biva[\w.]*)`", line)
        listed = re.fullmatch(r"api/(biva[\w.]*)", line)
        if heading or listed:
            name = (heading or listed).group(1)
            modules.append(name)
            pending.append(name)
            skip = bool(heading)
            continue
        if skip:
            # The automodule block under a heading moves to the module's own page.
            if line.startswith("```") and line != "```{eval-rst}":
                skip = False
            continue
        if line.startswith("## ") or line.startswith("```{toctree}"):
            flush()
        if line.startswith("```{toctree}") or line.startswith(":maxdepth"):
            skip_fence = True
            continue
        if skip_fence and line == "```":
            skip_fence = False
            continue
        out.append(line)
    flush()
    pages.mkdir(exist_ok=True)
    for name in modules:
        (pages / f"{name}.md").write_text(
            f"# `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n```\n")
    index.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n")
    return modules


if __name__ == "__main__":
    print(f"{len(split())} module pages in {DOCS / 'api'}")
