"""Methods by name, with their parameters read from each class's `__init__` signature."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from kdforge.config_values import coerce_value
from kdforge.errors import ConfigError, KDForgeError, did_you_mean, suggest
from kdforge.methods.base import Method
from kdforge.registry import Registry


class UnknownMethodError(KDForgeError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _unknown(name: str, close: list[str], names: list[str]) -> UnknownMethodError:
    return UnknownMethodError(f"unknown method '{name}'.{did_you_mean(close)} `kdforge methods` lists them all.")


def _discover() -> None:
    import kdforge.methods  # noqa: F401  (each method file registers itself)


#: every method file of `kdforge/methods/` registers its class here (importing the package does)
METHODS: Registry[type[Method]] = Registry(
    "method", "a `Method` subclass, built as cls(**params) from a `losses:` entry; see methods/base.py", _unknown,
    discover=_discover)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available under `cls.name`."""
    return METHODS.add(cls.name, cls)


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


@dataclass
class Param:
    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        tp = self.annotation
        return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def method_params(name: str) -> list[Param]:
    """The keyword parameters of a method with their types and defaults."""
    cls = method_class(name)
    hints = typing.get_type_hints(cls.__init__)
    params = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params.append(Param(p.name, hints.get(p.name, Any), p.default))
    return params


def build_method(name: str, params: dict[str, Any] | None = None, path: str | None = None) -> Method:
    """Instantiate method `name` with validated `params` (errors name `path.key`)."""
    where = path or f"losses.{name}"
    try:
        cls = method_class(name)
    except UnknownMethodError as exc:
        raise UnknownMethodError(f"{where}: {exc}") from None
    known = {p.name: p for p in method_params(name)}
    kwargs = {}
    for key, value in (params or {}).items():
        if key not in known:
            raise ConfigError(
                f"{where}.{key}: method '{name}' has no parameter '{key}'.{suggest(key, known)} "
                f"Parameters: {', '.join(known) or 'none'} (see `kdforge methods {name}`)."
            )
        kwargs[key] = coerce_value(value, known[key].annotation, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
