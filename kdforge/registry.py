"""One registry type for everything kdforge finds by name: methods, zoo models, datasets.

A `Registry` holds the entries of one kind, each registered once under its name; looks a name up
(raising the kind's own error, with the close matches, when it is unknown); lists the names; and
runs the kind's discovery (importing the modules that register the built-in entries) before the
first lookup. Each registry's `contract` says what its entries are and how they are called.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one `kind` by name.

    `key(name)` is the form names are compared in (datasets: case and '-'/'_' ignored; the rest: as
    written); `unknown(name, close_matches, names)` builds the error for a name that is not registered;
    `discover()`, called once before the first lookup or listing, imports the built-in entries.
    """

    def __init__(self, kind: str, contract: str, unknown: Callable[[str, list[str], list[str]], Exception], *,
                 key: Callable[[str], str] = lambda name: name, discover: Callable[[], None] | None = None):
        self.kind, self.contract, self._unknown, self._key = kind, contract, unknown, key
        self._discover, self._discovered = discover, discover is None
        self._entries: dict[str, tuple[str, T]] = {}  # key -> (name as registered, entry)

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; registering the same entry again is allowed, another one is not."""
        if not name:
            raise ValueError(f"{self.kind} name {name!r} is empty")
        key = self._key(name)
        if key in self._entries and self._entries[key][1] is not entry:
            raise ValueError(f"{self.kind} name {name!r} is already registered")
        self._entries[key] = (name, entry)
        return entry

    def find(self, name: str) -> T | None:
        """The entry registered as `name` so far, or None (no discovery, no error: for registering)."""
        found = self._entries.get(self._key(name))
        return None if found is None else found[1]

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True
            self._discover()

    def get(self, name: str) -> T:
        """The entry registered as `name`, or the kind's error naming the close matches."""
        self._ensure_discovered()
        found = self._entries.get(self._key(name))
        if found is None:
            raise self._unknown(name, self.close_matches(name), self.names())
        return found[1]

    def __contains__(self, name: str) -> bool:
        self._ensure_discovered()
        return self._key(name) in self._entries

    def names(self, where: Callable[[T], bool] = lambda entry: True) -> list[str]:
        """The registered names (of the entries `where` accepts), sorted."""
        self._ensure_discovered()
        return sorted(name for name, entry in self._entries.values() if where(entry))

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """Up to `n` registered names close to `name` (compared as keys), closest first."""
        by_key = {key: registered for key, (registered, _) in self._entries.items()}
        return [by_key[k] for k in difflib.get_close_matches(self._key(name), list(by_key), n=n, cutoff=0.5)]
