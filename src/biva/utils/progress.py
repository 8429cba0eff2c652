"""Progress bars on stderr (tqdm) for loops over images."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True):
    """A progress bar on stderr over ``total`` images; yields its ``update(n)`` (None when
    disabled), the callback the evaluation loops take."""
    if not enabled or total <= 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0,
              file=sys.stderr) as bar:
        yield bar.update
