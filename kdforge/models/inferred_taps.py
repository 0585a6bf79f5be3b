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

A token model (a vision transformer) keeps one resolution throughout. Its blocks are the children of the
shallowest module whose children are all blocks: modules of their own (not single layers), called once,
each mapping ``(N, T, D)`` tokens (or a tuple starting with them) to tokens of the same shape (timm's
``blocks.0`` ... ``blocks.11``), and which together hold at least half of the model's parameters (so a CNN
with a small token-mixing head stays a CNN); its stages are three blocks at a third, two
thirds and the whole of its depth (our interpretation: so that it pairs with a CIFAR network's three stages),
and its `token_layout` (`models/tokens.py`) says which tokens are patches on which grid: the patch map of
the last 4-D output before the first block, the rest prefix tokens. A model with a distillation head
(``head_dist``, DeiT) classifies with ``head``.
Layers given by name to a method always win; `kdforge layers` shows what was inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdforge.models.tokens import TokenLayout, layout_of


@dataclass(frozen=True)
class InferredTaps:
    stage_names: list[str]
    block_names: list[str]
    classifier_name: str | None
    logits_shape: tuple[int, ...]
    token_layout: TokenLayout | None = None


@dataclass
class _Call:
    name: str
    module: nn.Module
    inside: tuple[int, ...]  # the calls open when this one started (its ancestors), outermost first
    input_size: tuple[int, int] | None = None
    input_shape: tuple[int, ...] | None = None
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
        calls.append(_Call(name, module, tuple(open_calls), _spatial(first),
                           tuple(first.shape) if first is not None else None))
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
    classifier = linears[-1] if linears else None
    if "head" in linears and "head_dist" in linears:  # DeiT: the class token's head classifies
        classifier = "head"
    tokens = _token_blocks(model, returned, calls, times)
    if tokens is not None:
        blocks, layout = tokens
        depth = len(blocks)
        stages = list(dict.fromkeys(blocks[max(1, round(depth * k / 3)) - 1] for k in (1, 2, 3)))
        return InferredTaps(stages, blocks, classifier, tuple(output.shape[1:]), layout)
    return InferredTaps(stages, blocks, classifier, tuple(output.shape[1:]))


def _token_tensor(value: object) -> torch.Tensor | None:
    """A call's (first) output tensor if it is (N, T, D) tokens: a block may return a tuple (HF's layers do)."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) and value.dim() == 3 else None


def _tokens_in_tokens_out(call: _Call) -> bool:
    out = _token_tensor(call.output)
    return out is not None and call.input_shape == tuple(out.shape)


def _token_blocks(model: nn.Module, returned: list[_Call], calls: list[_Call],
                  times: dict[str, int]) -> tuple[list[str], TokenLayout] | None:
    """(block names, token layout) of a token model (see the module docstring), or None. Of the modules whose
    children are all blocks (modules of their own, called once, mapping tokens to tokens of the same shape), the
    shallowest holds the blocks; one such child is a one-block model."""
    by_name = {c.name: c for c in returned}
    found = []
    for name, module in model.named_modules():
        if not name:
            continue
        children = [(f"{name}.{child}", sub) for child, sub in module.named_children()]
        if not children or any(n not in by_name or times[n] != 1 or not list(sub.children()) for n, sub in children):
            continue
        if all(_tokens_in_tokens_out(by_name[n]) for n, _ in children):
            found.append((name.count("."), name, [n for n, _ in children]))
    total = sum(p.numel() for p in model.parameters())
    for _, _, children in sorted(found):  # shallowest first
        held = sum(p.numel() for n in children for p in model.get_submodule(n).parameters())
        if held * 2 < total:  # a transformer's blocks hold most of it; a CNN's token-mixing head does not
            continue
        first = by_name[children[0]]
        tokens = int(_token_tensor(first.output).shape[1])
        started = calls.index(first)
        maps = [c for c in calls[:started] if _spatial(c.output) is not None]
        layout = layout_of(model, tokens, _spatial(maps[-1].output) if maps else None)
        if layout is not None:
            return sorted(children, key=lambda c: returned.index(by_name[c])), layout
    return None


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
    if taps.token_layout is not None:
        model.token_layout = taps.token_layout
    model.inferred_taps = True
    return taps
