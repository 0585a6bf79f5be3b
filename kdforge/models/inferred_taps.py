"""Default taps of a model kdforge did not build (a user's `nn.Module`, a timm model), found by one dry run.

A zoo model names its `stage_names`, `block_names` and `classifier_name` itself (`zoo_base.ZooModel`);
`infer_taps` finds the same for any classifier from the order in which its modules finish on one image:

* stages: the modules called in one forward are listed in the order they return; consecutive ones whose
  output is an ``(N, C, H, W)`` tensor of the same H x W form one resolution, and the last of them (the
  outermost module that ends it, e.g. torchvision's ``layer1``) ends that stage. Only modules called once
  count (a ReLU shared by several layers is ambiguous), and 1 x 1 maps (after global pooling) are not a stage.
  Nor is a module inside a block (a module other than an `nn.Sequential`) that changes the resolution once, at
  the block's input size: a bottleneck's or an inverted residual's 1x1 expansion returns before the block's
  strided conv, but ends nothing;
* blocks: the children of each stage module, called once, that return after the previous stage ended with
  an output at the stage's resolution (a stage without such children is its own block);
* classifier: the last ``nn.Linear`` called whose output has the logits' shape; its input is the embedding.

This is kdforge's reading of "the last module at each spatial resolution" (issue 24), not a published rule.
Layers given by name to a method always win; `kdforge layers` shows what was inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class InferredTaps:
    stage_names: list[str]
    block_names: list[str]
    classifier_name: str | None
    logits_shape: tuple[int, ...]


@dataclass
class _Call:
    name: str
    module: nn.Module
    inside: tuple[int, ...]  # the calls open when this one started (its ancestors), outermost first
    input_size: tuple[int, int] | None = None
    output: object = None
    sizes: set = field(default_factory=set)  # spatial sizes returned by this call and every call inside it


def _calls(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], object, list[_Call]]:
    """Every submodule call on `example` in the order the calls return, the output, and the calls in the order
    they started (what `_Call.inside` indexes)."""
    calls: list[_Call] = []
    returned: list[_Call] = []
    open_calls: list[int] = []

    def enter(module, args, name):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        calls.append(_Call(name, module, tuple(open_calls), _spatial(first)))
        open_calls.append(len(calls) - 1)

    def leave(_module, _args, output):
        own = open_calls.pop()
        call = calls[own]
        call.output = output
        size = _spatial(output)
        if size is not None:
            for k in (*call.inside, own):
                calls[k].sizes.add(size)
        returned.append(call)

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: enter(m, a, name)))
            handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return returned, output, calls


def _spatial(output: object) -> tuple[int, int] | None:
    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
        return int(output.shape[2]), int(output.shape[3])
    return None


def _before_a_block_transition(call: _Call, calls: list[_Call]) -> bool:
    """`call` runs inside a block that changes the resolution once, before the change: a bottleneck's or an
    inverted residual's 1x1 expansion at the input's size (its output is not the stage's end)."""
    size = _spatial(call.output)
    if size is None:
        return False
    for k in call.inside:
        block = calls[k]
        if isinstance(block.module, nn.Sequential):  # a container of layers (a VGG stage, `features`), not a block
            continue
        out = _spatial(block.output)
        if block.input_size == size and out not in (None, size) and block.sizes <= {size, out}:
            return True
    return False


def infer_taps(model: nn.Module, example: torch.Tensor) -> InferredTaps:
    """Stages, blocks and classifier of `model` from one forward pass of `example` (see the module docstring)."""
    returned, output, calls = _calls(model, example)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model must return a (batch, classes) tensor of logits, got {shape}")
    times: dict[str, int] = {}
    for call in returned:
        times[call.name] = times.get(call.name, 0) + 1
    once = [(c.name, c.output) for c in returned if times[c.name] == 1 and not _before_a_block_transition(c, calls)]
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
    for k, end in enumerate(ends):
        stage, size = once[end][0], _spatial(once[end][1])
        children = {f"{stage}.{child}" for child, _ in model.get_submodule(stage).named_children()}
        start = ends[k - 1] + 1 if k else 0  # a child that returned before the previous stage ended is not this one's
        inside = [name for name, out in once[start:end] if name in children and _spatial(out) == size]
        blocks.extend(inside or [stage])
    linears = [c.name for c in returned if isinstance(c.module, nn.Linear) and times[c.name] == 1
               and isinstance(c.output, torch.Tensor) and tuple(c.output.shape) == tuple(output.shape)]
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
