"""A run's losses: what its `losses:` section builds.

The words, used the same everywhere: a *loss* is one entry of `losses:`, a key (`kd`, or
`kd:strong` for a second one) with a *method* (the registered algorithm, `methods[key]`) and a
*weight* (`weights[key]`); `Losses` holds a run's losses (`trainer.losses`); one step's
*loss values* are `{name: weight * value}`, a name being the key or `key/part` for a method
that returns several parts; they are logged as `train_<name>`."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kdforge.data.augment import PixelNormalization
from kdforge.errors import ConfigError
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import build_method


def parse_loss_spec(key: str, spec: Any) -> tuple[str, float, dict[str, Any]]:
    """`losses:` entry -> (method name, weight, parameters). `key` may be 'name:tag'."""
    name = key.split(":", 1)[0]
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str, dict)):
        raise ConfigError(f"losses.{key}: expected a weight or a mapping with 'weight', got {spec!r}")
    if isinstance(spec, dict):
        params = dict(spec)
        return name, _weight(params.pop("weight", 1.0), f"losses.{key}.weight"), params
    return name, _weight(spec, f"losses.{key}"), {}


def _weight(value: Any, path: str) -> float:
    """A loss weight: a number (YAML reads `5e-1` as a string, so numeric strings count too)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a weight (a number), got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    return float(value)


class Losses(nn.Module):
    """A run's losses (each a method and a weight, by key); called on a step's outputs, it gives the
    step's loss values by name."""

    def __init__(self, methods: dict[str, Method], weights: dict[str, float]):
        super().__init__()
        if not methods:
            raise ConfigError("losses: at least one loss is needed, e.g. `losses: {ce: 1.0}`")
        if all(weight == 0.0 for weight in weights.values()):
            raise ConfigError(f"losses: every weight is 0 ({', '.join(weights)}), so there is nothing to train")
        self.methods = nn.ModuleDict(methods)
        self.weights = dict(weights)

    @classmethod
    def from_config(cls, losses: dict[str, Any]) -> "Losses":
        methods, weights = {}, {}
        for key, spec in losses.items():
            name, weight, params = parse_loss_spec(key, spec)
            methods[key] = build_method(name, params, path=f"losses.{key}")
            weights[key] = weight
        return cls(methods, weights)

    def active(self, training_only: bool = False) -> list[Method]:
        """The methods of losses with a non-zero weight or (unless `training_only`) a stage before training;
        only these are bound and tapped."""
        return [m for key, m in self.methods.items()
                if self.weights[key] != 0.0 or (m.pretrain_epochs > 0 and not training_only)]

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.active())

    @property
    def needs_labels(self) -> bool:
        return any(m.needs_labels for m in self.active())

    def taps(self, side: str, training_only: bool = False) -> list[str]:
        """Tap strings of the 'teacher' or 'student' side, in order, without repeats."""
        attr = f"{side}_layers"
        return list(dict.fromkeys(t for m in self.active(training_only) for t in getattr(m, attr)))

    @property
    def teacher_taps(self) -> list[str]:
        return self.taps("teacher")

    @property
    def student_taps(self) -> list[str]:
        return self.taps("student")

    def wrap_student(self, student: nn.Module, teacher: nn.Module | None) -> nn.Module:
        """The network to train in place of `student`: each active method's `wrap_student` in turn (after
        `refuse_token_models`)."""
        self.refuse_token_models(student, teacher)
        for method in self.active():
            student = method.wrap_student(student, teacher)
        return student

    def loop_hooks(self) -> list:
        """The hooks the active methods add to the training loop (`Method.loop_hooks`), in the losses' order."""
        active = self.active()
        return [hook for key, m in self.methods.items() if m in active for hook in m.loop_hooks(key)]

    def extra_views(self, images: torch.Tensor, normalization: PixelNormalization) -> dict[str, torch.Tensor]:
        """{loss key: extra images} of the active methods that ask for some (`Method.extra_views`)."""
        views, active = {}, self.active()
        for key, method in self.methods.items():
            if method in active:
                extra = method.extra_views(images, normalization)
                if extra is not None:
                    views[key] = extra
        return views

    def refuse_token_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """A one-line ConfigError naming the first active method that cannot serve a token model (a vision
        transformer, `Method.token_models`) where the student or the teacher is one."""
        from kdforge.errors import ConfigError

        tokens = [role for role, model in (("student", student), ("teacher", teacher))
                  if getattr(model, "token_layout", None) is not None]
        active = self.active()
        for key, method in self.methods.items():
            if method in active and tokens and method.token_models is not None:
                raise ConfigError(f"losses.{key}: {method.name} cannot distil with a token model (the {tokens[0]} is "
                                  f"a vision transformer): {method.token_models}; `kdforge methods` lists the "
                                  f"methods that can")

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Each active method's layers for these models (after `refuse_token_models`)."""
        self.refuse_token_models(student, teacher)
        for method in self.active():
            method.bind(student, teacher)

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        for method in self.active():
            method.setup(student, teacher, example)

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """The step's loss values, {name: weight * value}; a method returning a dict gives names 'key/part'."""
        values: dict[str, torch.Tensor] = {}
        for key, method in self.methods.items():
            weight = self.weights[key]
            if weight == 0.0:
                continue
            value = method(out.for_method(key) if out.views else out)
            parts = value.items() if isinstance(value, dict) else [(None, value)]
            for part, loss in parts:
                name = key if part is None else f"{key}/{part}"
                values[name] = loss if weight == 1.0 else weight * loss
        return values


def __getattr__(name: str):  # old public names (kdforge/renamed.py), with a DeprecationWarning
    from kdforge.renamed import renamed_attribute

    return renamed_attribute(__name__, name)
