"""One plotting style for the report's figures (matplotlib, Agg; no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
from matplotlib.figure import Figure

from biva.utils.atomic import atomic_write_bytes

#: rcParams of every report figure: small, readable, light grid, colour-blind-safe cycle.
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "axes.prop_cycle": matplotlib.cycler(color=[
        "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
        "#000000"]),
}
TRAIN_COLOR, VALID_COLOR = "#0072B2", "#D55E00"
HEATMAP_CMAP = "viridis"


@contextmanager
def figure(ncols: int = 1, nrows: int = 1, width: float = 11.0,
           height: float = 3.4) -> Iterator[tuple[Figure, list]]:
    """A Figure with nrows x ncols axes (flat list) under the report style; size in inches."""
    with matplotlib.rc_context(RC):
        # Figure() instead of pyplot: no global backend switch and nothing left open.
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
        yield fig, axes


def save_png(fig, path, dpi: int = 110):
    """Write a matplotlib figure to ``path`` as PNG atomically (a full disk or a kill leaves
    the earlier file whole); returns the path."""
    from pathlib import Path


    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (no metadata, so nothing names a web address)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
