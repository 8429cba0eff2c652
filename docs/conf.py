"""Sphinx configuration of biva's documentation (MyST Markdown, Furo theme).

Build: ``bash scripts/docs.sh`` (installs the docs extra, then ``sphinx-build -W`` into
docs/_build/html). Offline: no intersphinx, no remote images, nothing fetched at build time.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

project = "biva"
author = "the biva developers"
copyright = "2026, the biva developers"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "biva_docs",
    # MathJax served with the site (no CDN): the maths renders offline too.
    "sphinx-mathjax-offline",
]
# The highlighted source pages ([source] links) are a quarter of the build; the test suite's
# build leaves them out (BIVA_DOCS_SOURCE_PAGES=0), scripts/docs.sh keeps them.
if os.environ.get("BIVA_DOCS_SOURCE_PAGES", "1") != "0":
    extensions.append("sphinx.ext.viewcode")
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "results/**", "screenshots/**", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "ignore-module-all": True,
                           "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = True
autodoc_mock_imports: list[str] = []
suppress_warnings: list[str] = []
nitpicky = False

html_theme = "furo"
html_title = "biva"
html_show_sourcelink = False
smartquotes = False   # "--set" stays two hyphens, quotes stay straight
