"""Distillation methods on one contract (see `base.py`); importing this registers them all."""

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.losses import Losses
from kdforge.methods.registry import (
    UnknownMethodError,
    build_method,
    method_class,
    method_names,
    method_params,
    register_method,
)

def _register_builtin_methods() -> None:
    """Import every module of this package, so each method file registers itself (the shared pieces,
    e.g. `default_taps`, `adapters`, `logit_ops`, register nothing: importing them is harmless)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_builtin_methods()
import kdforge.graft.method  # noqa: E402,F401  (NetGraft's loss, kept with NetGraft)

def __getattr__(name: str):  # old public names (kdforge/renamed.py), with a DeprecationWarning
    from kdforge.renamed import renamed_attribute

    return renamed_attribute(__name__, name)


__all__ = [
    "Method", "StepOutputs", "Losses", "UnknownMethodError", "build_method",
    "method_class", "method_names", "method_params", "register_method",
]
