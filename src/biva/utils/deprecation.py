"""Renamed options, fields and arguments: the old spelling keeps working for one release and
says, in one line, which name replaces it."""

from __future__ import annotations

import warnings

#: The release in which the old spellings stop working.
REMOVED_IN = "0.3"


class BivaDeprecationWarning(FutureWarning):
    """An old spelling was used. A FutureWarning, so Python shows it by default; the command
    line prints it as one line (``biva CMD: warning: ...``)."""


def warn_renamed(old: str, new: str, where: str = "", stacklevel: int = 3) -> None:
    """Warn that ``old`` (an option, config field or argument) is now called ``new``."""
    prefix = f"{where}: " if where else ""
    warnings.warn(f"{prefix}{old} is deprecated; use {new} (same meaning; {old} stops working "
                  f"in biva {REMOVED_IN})", BivaDeprecationWarning, stacklevel=stacklevel)
