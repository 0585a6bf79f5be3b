"""Cutting a zoo model into blocks by stage names, and running one block at a time.

A zoo model runs ``stem -> stage 0 -> between 0 -> stage 1 -> ... -> last stage -> head``
(`kdforge.models.zoo_base.ZooModel`). A cut names the stages at which blocks end: block ``b``
runs the stages after the previous block's end up to and including its own, each followed by
what lies between it and the next stage (VGG's max-pool), and block 0 starts with the stem. The
head stays apart: NetGraft grafts it as a unit of its own. Running every block and then the head
is exactly ``model.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.capabilities import CuttableNet

__all__ = ["block_ends", "run_block", "trace_blocks", "block_outputs"]


def block_ends(model: nn.Module, names: Sequence[str] | None, role: str) -> list[int]:
    """Stage indices at which the blocks named by `names` end (default: one block per stage).

    `names` must be stage names of `model` (`model.stage_names`), in forward order, the last
    one the model's last stage. `role` ('teacher' / 'student') names the model in errors.
    """
    if not isinstance(model, CuttableNet) or not model.stage_names:
        raise ConfigError(f"{role}: {type(model).__name__} is not a zoo model with stages; NetGraft cuts zoo models "
                          f"(see `kdforge models`)")
    stages = list(model.stage_names)
    if names is None:
        return list(range(len(stages)))
    names = list(names)
    unknown = [n for n in names if n not in stages]
    if not names or unknown:
        raise ConfigError(f"{role}_blocks: {unknown or names} {'are' if len(unknown) != 1 else 'is'} not a stage "
                          f"of the {role}; blocks end at stages, one of {stages}")
    ends = [stages.index(n) for n in names]
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ConfigError(f"{role}_blocks: {names} must follow the forward order {stages}, each once")
    if ends[-1] != len(stages) - 1:
        raise ConfigError(f"{role}_blocks: the last block must end at the last stage '{stages[-1]}', "
                          f"got {names[-1]!r}")
    return ends


def run_block(model: nn.Module, ends: Sequence[int], b: int, x: torch.Tensor) -> torch.Tensor:
    """Block `b` of `model` cut at `ends` (stage indices) on `x`; block 0 takes the image."""
    first = ends[b - 1] + 1 if b else 0
    last_stage = len(model.stage_names) - 1
    if b == 0:
        x = model.stem(x)
    for s in range(first, ends[b] + 1):
        x = model._stage(s, x)
        if s < last_stage:
            x = model._between(s, x)
    return x


def trace_blocks(model: nn.Module, ends: Sequence[int],
                 example: torch.Tensor) -> tuple[list[list[str]], list[torch.Tensor]]:
    """(modules, outputs): the names of the submodules (containers included) that each block, then
    the head, calls (the last list is the head's), and each block's output on `example`.

    One pass of `example` through the blocks with forward pre-hooks (eval mode, no gradients).
    """
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, name=name: seen.append(name))
             for name, m in model.named_modules() if name]
    groups: list[list[str]] = []
    try:
        outputs = _forward_blocks(model, ends, example, after_each=lambda: groups.append(_take(seen)), head=True)
        groups.append(_take(seen))
    finally:
        for h in hooks:
            h.remove()
    return groups, outputs


def block_outputs(model: nn.Module, ends: Sequence[int], example: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output on `example` (eval mode, no gradients)."""
    return _forward_blocks(model, ends, example)


def _take(seen: list[str]) -> list[str]:
    names = list(dict.fromkeys(seen))
    seen.clear()
    return names


@torch.no_grad()
def _forward_blocks(model: nn.Module, ends: Sequence[int], x: torch.Tensor, after_each=None,
                    head: bool = False) -> list[torch.Tensor]:
    """Every block's output (and with `head`, then the head run too) in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for b in range(len(ends)):
            x = run_block(model, ends, b, x)
            outputs.append(x)
            if after_each is not None:
                after_each()
        if head:
            model.head(x)
        return outputs
    finally:
        model.train(was_training)
