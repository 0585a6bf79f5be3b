"""Models from Python code instead of the zoo: ``student: {import: "package.module:factory", kwargs: {...}}``
or ``"path/to/file.py:factory"`` (a timm model: ``{import: "timm:create_model", kwargs: {model_name: resnet18,
num_classes: 10}}`` where timm is installed; kdforge does not depend on it).

The factory is called with `kwargs`, plus ``num_classes`` / ``in_channels`` when its signature names them and
`kwargs` does not. The model's record (what checkpoints store) holds the spec, so `eval`, `export`, `predict`
and `report` rebuild it the same way; its default layers are inferred by a dry run (`inferred_taps.py`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdforge.engine.checkpoint import first_line
from kdforge.errors import ConfigError
from kdforge.models.inferred_taps import ensure_taps

_FORM = "'package.module:factory' or 'path/to/file.py:factory'"


def parse_import_spec(spec: str, where: str = "import") -> tuple[str, str]:
    """(module or file, factory name) of `spec`; a ConfigError naming `where` if it has neither form."""
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"{where}: {spec!r} is not {_FORM}")
    return target, attr


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def resolved_spec(spec: str, where: str = "import") -> str:
    """`spec` with a file path made absolute (what a checkpoint records: it must not depend on the directory a
    later `kdforge eval` runs in)."""
    target, attr = parse_import_spec(spec, where)
    return f"{Path(target).resolve()}:{attr}" if _is_file(target) else spec


def display_name(spec: str) -> str:
    """What summaries, reports and export file names call an imported model: ``mynet.make``, ``timm.create_model``."""
    target, attr = parse_import_spec(spec)
    return f"{Path(target).stem if _is_file(target) else target}.{attr}"


def _module_of(target: str, where: str):
    if _is_file(target):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{where}: file {target!r} does not exist")
        name = "kdforge_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
        if name in sys.modules:
            return sys.modules[name]
        loaded = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loaded)
        sys.modules[name] = module
        try:
            loaded.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ConfigError(f"{where}: running {target} failed: {type(exc).__name__}: {first_line(exc, 300)}") from exc
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import module {target!r} ({exc}); is it installed, or on "
                          f"PYTHONPATH?") from None
    except Exception as exc:  # the package's own import failed
        text = first_line(exc, 300)
        if "torchvision::" in text:
            return _import_without_torchvision_ops(target, where, text)
        raise ConfigError(f"{where}: importing {target!r} failed: {type(exc).__name__}: {text}") from None


def _import_without_torchvision_ops(target: str, where: str, first_error: str):
    """`target` (timm) again after defining torchvision's op schemas (`torchvision_ops`), with a warning; one line
    saying what to install where that does not help either."""
    import warnings

    from kdforge.models.torchvision_ops import allow_torchvision_without_its_ops

    for name in [m for m in sys.modules if m == target or m.startswith(target + ".")]:
        del sys.modules[name]
    try:
        if allow_torchvision_without_its_ops():
            warnings.warn(f"{where}: torchvision's compiled ops do not load with this torch (a build for another "
                          f"torch); importing {target} with their schemas defined, enough for classification "
                          f"models (docs/models.md)", RuntimeWarning, stacklevel=2)
        return importlib.import_module(target)
    except Exception as exc:
        raise ConfigError(f"{where}: importing {target!r} failed: {first_error} (torchvision built for another "
                          f"torch, e.g. its CUDA build beside a CPU torch: install the torchvision that matches "
                          f"torch; docs/models.md, Vision transformers): {first_line(exc, 200)}") from None


def load_factory(spec: str, where: str = "import") -> Callable[..., Any]:
    """The callable `spec` names."""
    target, attr = parse_import_spec(spec, where)
    obj = _module_of(target, where)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: {target} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {spec} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj


def _named_params(factory: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return set()


def build_imported(spec: str, kwargs: dict[str, Any], *, num_classes: int, in_channels: int, image_size: int,
                   where: str = "import") -> nn.Module:
    """The model `spec(**kwargs)` builds, checked on one `image_size` image, with inferred taps and a record."""
    factory = load_factory(spec, where)
    call = dict(kwargs)
    named = _named_params(factory)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key in named and key not in call:
            call[key] = value
    try:
        model = factory(**call)
    except Exception as exc:  # the user's code: any failure is theirs to read in one line
        raise ConfigError(f"{where}: {spec}(**kwargs) failed: {type(exc).__name__}: {first_line(exc, 300)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: {spec} returned a {type(model).__name__}, not an nn.Module")
    adopt(model, torch.zeros(2, in_channels, image_size, image_size), num_classes, where)
    model.zoo_record = {"name": display_name(spec), "import": resolved_spec(spec, where),
                        "kwargs": dict(kwargs), "num_classes": num_classes, "in_channels": in_channels,
                        "image_size": image_size}
    return model


def adopt(model: nn.Module, example: torch.Tensor, num_classes: int, where: str = "model") -> None:
    """Check that `model` maps `example` to `num_classes` logits and give it inferred taps (unless it names its
    own); also what a model passed from Python goes through."""
    try:
        taps = ensure_taps(model, example)
    except ValueError as exc:
        raise ConfigError(f"{where}: {first_line(exc, 300)}") from None
    except Exception as exc:  # e.g. a shape mismatch, or a model's own assertion on the input size
        raise ConfigError(f"{where}: a {tuple(example.shape[1:])} image does not run through the model: "
                          f"{type(exc).__name__}: {first_line(exc, 300)}") from None
    classes = taps.logits_shape[0] if taps is not None else None
    if classes is not None and classes != num_classes:
        raise ConfigError(f"{where}: the model outputs {classes} classes but the data has {num_classes}: pass the "
                          f"class count in kwargs (e.g. num_classes: {num_classes})")
    if not hasattr(model, "input_size"):
        model.input_size = int(example.shape[-1])
