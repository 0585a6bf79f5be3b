"""Feature taps: intermediate tensors by module name through forward hooks.

Models are never rewritten. A tap is a module name, optionally suffixed with
``:input`` to take the module's input instead of its output (e.g.
``layer1.0.out_relu:input`` is a residual block's pre-activation output).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kdforge.errors import LayerError, suggest
from kdforge.models.capabilities import model_record_of

INPUT_SUFFIX = ":input"
OUTPUT_SUFFIX = ":output"


@dataclass(frozen=True)
class Tap:
    """One tensor to capture: the input or output of the module called `module`."""

    module: str
    what: str = "output"  # "output" or "input"

    @classmethod
    def parse(cls, text: str) -> "Tap":
        if text.endswith(INPUT_SUFFIX):
            return cls(text[: -len(INPUT_SUFFIX)], "input")
        if text.endswith(OUTPUT_SUFFIX):
            return cls(text[: -len(OUTPUT_SUFFIX)], "output")
        return cls(text, "output")

    def __str__(self) -> str:
        return self.module if self.what == "output" else self.module + INPUT_SUFFIX


def resolve_module(model: nn.Module, name: str, role: str = "") -> nn.Module:
    """The submodule called `name`, or a LayerError listing close matches (naming the model's `role`)."""
    modules = dict(model.named_modules())
    if name not in modules:
        hint = suggest(name, [n for n in modules if n], n=5)
        zoo_name = (model_record_of(model) or {}).get("name")
        who = f"{role} {zoo_name or type(model).__name__}".strip()
        raise LayerError(
            f"{who} has no module named '{name}'.{hint} "
            f"Run `kdforge layers {zoo_name or 'MODEL'}` to list the names that can be tapped."
        )
    return modules[name]


def expand_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Module names matching each glob pattern (e.g. ``layer*.?``), in model order."""
    names = [n for n, _ in model.named_modules() if n]
    result: list[str] = []
    for pattern in patterns:
        base = Tap.parse(pattern)
        if any(ch in base.module for ch in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, base.module)]
            if not hits:
                raise LayerError(f"no module of {type(model).__name__} matches '{base.module}'")
            result += [str(Tap(n, base.what)) for n in hits]
        else:
            result.append(pattern)
    return result


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise LayerError(f"tapped value is a {type(value).__name__}, not a tensor")


class FeatureTaps:
    """Capture tensors at named modules while a model runs.

    Use as a context manager (hooks are removed on exit) or call `remove()`.
    After each forward, `self.features` maps every tap string to its tensor.
    `role` (e.g. "student") names the model in the error for an unknown module name.
    A token model's (`model.token_layout`, `models/tokens.py`) block outputs arrive as maps: the patch tokens
    ``(N, T, D)`` laid on their grid as ``(N, D, H, W)``, the class and distillation tokens dropped.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str | Tap], runner=None, role: str = ""):
        self.model = model
        self.runner = runner if runner is not None else model  # e.g. torch.compile(model)
        self.taps = [t if isinstance(t, Tap) else Tap.parse(t) for t in taps]
        self.features: dict[str, torch.Tensor] = {}
        self.token_layout = getattr(model, "token_layout", None)
        self._handles = []
        points = getattr(model, "kdforge_tap_points", None) or {}  # a quantisation-prepared graph's (engine/quantize.py)
        for tap in dict.fromkeys(self.taps):  # unique, in order
            key = str(tap)
            if key in points:  # the tapped value passes through an identity module of its own
                self._handles.append(resolve_module(model, points[key], role).register_forward_hook(
                    self._output_hook(key)))
                continue
            module = resolve_module(model, tap.module, role)
            if tap.what == "input":
                handle = module.register_forward_pre_hook(self._input_hook(key))
            else:
                handle = module.register_forward_hook(self._output_hook(key))
            self._handles.append(handle)

    def _as_feature(self, value) -> torch.Tensor:
        tensor = first_tensor(value)
        if self.token_layout is not None and self.token_layout.holds(tensor):
            return self.token_layout.to_map(tensor)
        return tensor

    def _input_hook(self, key: str):
        def hook(_module, args):
            self.features[key] = self._as_feature(args)
        return hook

    def _output_hook(self, key: str):
        def hook(_module, _args, output):
            self.features[key] = self._as_feature(output)
        return hook

    def __call__(self, *args, **kwargs):
        """Run the model; return (output, {tap: tensor})."""
        self.features = {}
        output = self.runner(*args, **kwargs)
        missing = [str(t) for t in self.taps if str(t) not in self.features]
        if missing:
            raise LayerError(f"modules {missing} were not called in the forward pass, so nothing was captured")
        return output, self.features

    def run_eager(self, *args, **kwargs):
        """Like calling the taps, but through the plain model even when `runner` is compiled."""
        runner, self.runner = self.runner, self.model
        try:
            return self(*args, **kwargs)
        finally:
            self.runner = runner

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def layer_shapes(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, module type, output shape without batch) for every module called on `example`."""
    rows: list[tuple[str, str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, _args, output, name=name):
            if isinstance(output, torch.Tensor):
                rows.append((name, type(mod).__name__, tuple(output.shape[1:])))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(rows, key=lambda row: order[row[0]])
