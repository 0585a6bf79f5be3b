"""Default taps of a model kdforge did not build (a user's `nn.Module`, a timm model), found by one dry run.

A zoo model names its `stage_names`, `block_names` and `classifier_name` itself (`zoo_base.ZooModel`);
`infer_taps` finds the same for any classifier from the order in which its modules finish on one image:

* stages: the modules called in one forward are listed in the order they return; consecutive ones whose
  output is an ``(N, C, H, W)`` tensor of the same H x W form one resolution, and the last of them (the
  outermost module that ends it, e.g. torchvision's ``layer1``) ends that stage. Only modules called once
  count (a ReLU shared by several layers is ambiguous), and 1 x 1 maps (after global pooling) are not a stage;
* blocks: the children of each stage module, called once, that return after the previous stage ended with
  an output at the stage's resolution (a stage without such children is its own block);
* classifier: the last ``nn.Linear`` called whose output has the logits' shape; its input is the embedding.

This is kdforge's reading of "the last module at each spatial resolution" (issue 24), not a published rule.
Layers given by name to a method always win; `kdforge layers` shows what was inferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InferredTaps:
    stage_names: list[str]
    block_names: list[str]
    classifier_name: str | None
    logits_shape: tuple[int, ...]


def _calls(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, nn.Module, object]], object]:
    """(name, module, output) of every submodule call on `example`, in the order the calls return."""
    calls: list[tuple[str, nn.Module, object]] = []
    handles = [module.register_forward_hook(lambda mod, _a, out, name=name: calls.append((name, mod, out)))
               for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls, output


def _spatial(output: object) -> tuple[int, int] | None:
    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
        return int(output.shape[2]), int(output.shape[3])
    return None


def infer_taps(model: nn.Module, example: torch.Tensor) -> InferredTaps:
    """Stages, blocks and classifier of `model` from one forward pass of `example` (see the module docstring)."""
    calls, output = _calls(model, example)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model must return a (batch, classes) tensor of logits, got {shape}")
    times: dict[str, int] = {}
    for name, _, _ in calls:
        times[name] = times.get(name, 0) + 1
    once = [(name, out) for name, _, out in calls if times[name] == 1]
    ends: list[int] = []  # index into `once` of each stage's last module
    current = None
    for i, (_, out) in enumerate(once):
        size = _spatial(out)
        if size is None:
            continue
        if size != current:
            ends.append(i)
            current = size
        else:
            ends[-1] = i  # a later module at the same resolution: it ends the stage
    stages = [once[i][0] for i in ends]
    blocks: list[str] = []
    called_once = {name for name, _ in once}
    for k, end in enumerate(ends):
        stage, size = once[end][0], _spatial(once[end][1])
        children = {f"{stage}.{child}" for child, _ in model.get_submodule(stage).named_children()}
        start = ends[k - 1] + 1 if k else 0  # a child that returned before the previous stage ended is not this one's
        inside = [name for name, out in once[start:end] if name in children and _spatial(out) == size]
        blocks.extend(inside or [stage])
    linears = [name for name, mod, out in calls if isinstance(mod, nn.Linear) and name in called_once
               and isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(output.shape)]
    return InferredTaps(stages, blocks, linears[-1] if linears else None, tuple(output.shape[1:]))


def has_taps(model: nn.Module) -> bool:
    return bool(getattr(model, "stage_names", None))


def ensure_taps(model: nn.Module, example: torch.Tensor) -> InferredTaps | None:
    """Give `model` inferred `stage_names` / `block_names` / `classifier_name` where it names none (a zoo model
    or one that sets them is left alone); returns what was inferred, or None."""
    if has_taps(model):
        return None
    taps = infer_taps(model, example)
    model.stage_names = taps.stage_names
    model.block_names = taps.block_names
    if taps.classifier_name is not None:
        model.classifier_name = taps.classifier_name
    model.inferred_taps = True
    return taps
