"""The one exception type raised for unusable dataset files."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or not in the expected format.

    Messages name the file, what was expected and what was found, so a user can fix the
    file without reading the loader's source.
    """
