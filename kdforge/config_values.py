"""Reading plain values (as YAML gives them) into the typed config dataclasses, and back.

`coerce_value` checks one value against its annotation, gently converting (YAML's "5e-4" to a float),
with a one-line ConfigError naming the key path; `dataclass_from_dict` builds a section; `config_to_dict`
is the inverse, a plain nested dict for YAML and JSON.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from kdforge.errors import ConfigError, suggest


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, path: str) -> Any:
    """Return `value` checked (and gently converted) against the annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the inner key
            return coerce_value(value, options[0], path)
        for arg in options:
            try:
                return coerce_value(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}.")
        return value
    if dataclasses.is_dataclass(tp):
        shorthand = getattr(tp, "shorthand", None)
        return dataclass_from_dict(tp, shorthand(value) if shorthand else value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {_type_name(args[0])}, got {value!r}")
        if origin is tuple and len(args) != len(value) and Ellipsis not in args:
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        item_types = args if origin is tuple and Ellipsis not in args else [args[0]] * len(value)
        items = [coerce_value(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): coerce_value(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 5e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(number):  # YAML's .nan/.inf, or 'nan'/'inf' as text: a run would train to NaN
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")


def config_key(f: dataclasses.Field) -> str:
    """A field's key in config files: its name, or `metadata["key"]` where the key is a Python keyword
    (`student.import`)."""
    return f.metadata.get("key", f.name)


def dataclass_from_dict(cls: type, data: Any, path: str = "") -> Any:
    """An instance of the config dataclass `cls` from a mapping: unknown keys refused with suggestions, sections
    the mapping leaves out at their defaults, each value coerced, then the section's own `check(path)`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [config_key(f) for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                f"unknown config key '{where}'.{suggest(str(key), names)} Allowed keys here: {', '.join(names)}."
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = config_key(f)
        if key not in data:
            continue
        value = data[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # keys the file leaves out keep their defaults (those that still apply to what it gives)
            kept = default.defaults_under(value) if hasattr(default, "defaults_under") else config_to_dict(default)
            value = {**kept, **value}
        kwargs[f.name] = coerce_value(value, hints[f.name], f"{path}.{key}" if path else key)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check:
        check(path)
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), suitable for YAML/JSON."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {config_key(f): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(cfg)
