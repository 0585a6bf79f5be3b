"""Distillation methods on one contract (see `base.py`); importing this registers them all."""

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.compose import LossComposer
from kdforge.methods.registry import (
    UnknownMethodError,
    build_method,
    method_class,
    method_names,
    method_params,
    register_method,
)
from kdforge.methods import ce, kd  # noqa: F401  (registration)

__all__ = [
    "Method", "StepOutputs", "LossComposer", "UnknownMethodError", "build_method",
    "method_class", "method_names", "method_params", "register_method",
]
