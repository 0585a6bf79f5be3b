"""Config files and `--set` overrides: YAML read with one-line errors naming the file, line and column;
`key.path=value` overrides parsed as YAML and set into the nested mapping (with the `losses` and `hints`
shorthands expanded on the way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdforge.errors import ConfigError


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data['a']['b'] = value` for `dotted == 'a.b'`, creating mappings on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif keys[0] == "losses" and isinstance(child, (int, float)) and not isinstance(child, bool):
            child = node[key] = {"weight": child}  # `kd: 0.9` is shorthand for `kd: {weight: 0.9}`
        elif node is data and key == "hints" and isinstance(child, str):
            child = node[key] = {"select": child}  # `hints: auto` is shorthand for `hints: {select: auto}`
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.1' -> ('optim.lr', 0.1); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. optim.lr=0.1")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: 'line L, column C: problem'."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(problem.split())


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          f"is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data
