"""Progress bars on stderr (tqdm) for loops over images."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True):
    """A progress bar on stderr over ``total`` images, with the elapsed time and an ETA;
    yields its ``update(n)`` (None when disabled), the callback the evaluation loops take.
    ``n`` may be a fraction of an image (L_K reports each chunk of its K samples)."""
    if not enabled or total <= 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0,
              file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/{total} images "
                                          "[{elapsed} elapsed, ~{remaining} left]") as bar:
        yield bar.update
