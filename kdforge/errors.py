"""Error types a user can act on; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KDForgeError(Exception):
    """Base class of errors caused by the user's input (config, data, names, files)."""


class ConfigError(KDForgeError, ValueError):
    """A config key is unknown, mistyped, or has a value outside the allowed ones."""


class LayerError(KDForgeError, KeyError):
    """A module name to tap does not exist, or two tapped layers cannot be matched."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(KDForgeError, ValueError):
    """A checkpoint file is missing, unreadable, or of another architecture."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the close matches of `name` in `choices`, or ''."""
    return did_you_mean(difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5))


def did_you_mean(matches: list[str]) -> str:
    """' Did you mean: a, b?' for close matches already found (e.g. by `Registry.close_matches`), or ''."""
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
