"""What a model can do, declared in one place: small protocols the engine checks by type instead of
probing attributes (`isinstance(model, MultiPathNet)`; runtime-checkable, so any class with the members
qualifies, a user's own model included).

- `StagedNet`: a zoo-style model with named stages (`models.zoo_base.ZooModel` and its kin): its taps are
  named, and `forward_from` runs it from any stage's output (SFTN's branches, NetGraft's blocks).
- `MultiPathNet`: several weight-shared networks in one (the depth-dynamic `ddnn`): every path's cost,
  the full path's name, and BN recalibration per path.
- `CuttableNet`: a network run as stem, stages (with what lies between them) and head, which NetGraft
  and SimKD cut into blocks.
- `GraftedNet`: NetGraft's network inside the teacher: it takes the frozen teacher in, and folds into
  the student alone for export.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class StagedNet(Protocol):
    stage_names: list[str]
    block_names: list[str]
    classifier_name: str
    input_size: int

    def forward_from(self, stage: int, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class MultiPathNet(Protocol):
    full_name: str
    bn_recalibration_batches: int

    def path_complexity(self, image_size: int, in_channels: int) -> dict[str, dict[str, Any]]: ...

    def calibration_forwards(self) -> Iterable[Callable[[torch.Tensor], torch.Tensor]]: ...


@runtime_checkable
class CuttableNet(Protocol):
    """A network whose forward is stem -> stage i (then what lies between it and the next) -> head, as
    `ZooModel`: NetGraft and SimKD cut it into blocks (`graft/blocks.py`)."""

    stage_names: list[str]
    stem: nn.Module
    head: nn.Module

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor: ...

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GraftedNet(Protocol):
    def adopt_teacher(self, teacher: nn.Module) -> None: ...

    def fold(self) -> nn.Module: ...



def model_record_of(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild `model` from the zoo (the record `build_model` sets), or None for a custom model."""
    return getattr(model, "zoo_record", None)
