"""Exceptions raised by the data layer."""

from __future__ import annotations

import os

from kdforge.errors import ConfigError, KDForgeError

__all__ = ["DataError", "UnknownDatasetError", "DataOptionError"]


class DataError(KDForgeError, ValueError):
    """A data set is missing, malformed or inconsistent.

    The message names the offending file or folder, the expected official
    format and how to obtain the data. ``path`` holds that file or folder
    (or ``None`` when the problem is not tied to one).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class UnknownDatasetError(KDForgeError, ValueError):
    """``load_dataset`` was given a name that no loader is registered under."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]):
        self.name = name
        self.known = list(known)
        self.suggestions = list(suggestions)
        msg = f"unknown dataset {name!r}"
        if suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        msg += " Known datasets: " + ", ".join(known) + "."
        super().__init__(msg)


class DataOptionError(ConfigError, TypeError):
    """A split or loader option that the named dataset does not have."""
