"""The method contract: a distillation method is a module that turns one step's outputs into losses.

Methods never own a training loop. The engine runs the teacher (no grad, eval mode)
and the student with feature taps at the module names a method asks for, then calls
the method on a `StepOutputs`. A method's adapters (regressors, embedders, ...) are
its own submodules, so they train with the student and are saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class StepOutputs:
    """Everything a method may look at for one batch."""

    images: torch.Tensor
    labels: torch.Tensor | None  # None for label-free recipes
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    epoch: int = 0
    step: int = 0


class Method(nn.Module):
    """Base class of every loss/method; subclasses set the class attributes and `forward`.

    - `teacher_layers` / `student_layers`: tap strings (module names, optionally
      ``:input``) that the engine captures into `StepOutputs.*_features`.
    - `setup(student, teacher, example)`: called once before training, with the
      outputs of a dry run on one batch, to build adapters from the real shapes.
    - `forward(out)`: a loss tensor, or a dict of named loss tensors (summed).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.teacher_layers: list[str] = []
        self.student_layers: list[str] = []

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        """Build adapters from the shapes in `example`; nothing to do by default."""

    def forward(self, out: StepOutputs) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
