"""Models by name: `register_model` records a builder, `build_model` calls it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from kdforge.errors import ConfigError, KDForgeError, did_you_mean, suggest
from kdforge.registry import Registry

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model; `builder(num_classes=, in_channels=, **options)`."""

    name: str
    family: str
    input_size: int
    paper: str
    builder: Builder
    listed: bool = True  # False: a composite made by recipes (e.g. NetGraft's `grafted`), not in `model_names()`

    def options(self) -> dict[str, object]:
        """The builder's extra keyword options with their defaults."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params
                if p.name not in ("num_classes", "in_channels")
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


class UnknownModelError(KDForgeError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _unknown(name: str, close: list[str], names: list[str]) -> UnknownModelError:
    return UnknownModelError(f"unknown model '{name}'.{did_you_mean(close)} `kdforge models` lists all names.")


def _discover() -> None:
    import kdforge.models  # noqa: F401  (each family's file registers its builders)


#: every zoo family's file registers its builders here (importing `kdforge.models` does)
MODELS: Registry[ModelInfo] = Registry(
    "model", "a `ModelInfo`: builder(num_classes=, in_channels=, **options) -> nn.Module", _unknown,
    discover=_discover)


def register_model(name: str, *, family: str, input_size: int, paper: str = "",
                   listed: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: make `builder(num_classes=..., in_channels=3, **kw)` available as `name`.

    `listed=False` keeps a buildable composite (one that recipes configure) out of `model_names()`.
    """
    if input_size not in (32, 224):
        raise ValueError(f"input_size of model {name!r} must be 32 or 224, got {input_size}")

    def decorator(builder: Builder) -> Builder:
        MODELS.add(name, ModelInfo(name, family, input_size, paper, builder, listed))  # refuses a name taken
        return builder

    return decorator


def model_names() -> list[str]:
    """Every listed model name, sorted (composites registered with ``listed=False`` are left out)."""
    return MODELS.names(lambda info: info.listed)


def model_info(name: str) -> ModelInfo:
    return MODELS.get(name)


def check_options(name: str, options: Iterable[str]) -> ModelInfo:
    """The info of model `name`, checking that it takes every option named in `options`."""
    info = model_info(name)
    known = info.options()
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(info.builder).parameters.values())
    for key in options:
        if key not in known and not accepts_any:
            listed = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
            raise ConfigError(f"model '{name}' has no option '{key}'.{suggest(key, known)} Options: {listed}.")
    return info


def build_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """A freshly initialised model `name` (weights depend only on the torch RNG state)."""
    info = check_options(name, kwargs)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model '{name}': {key} must be a positive integer, got {value!r}")
    model = info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    # how to rebuild this model: stored in checkpoints so `kdforge eval RUN` needs no config
    model.zoo_record = {"name": info.name, "num_classes": num_classes, "in_channels": in_channels,
                        "options": dict(kwargs)}
    return model
