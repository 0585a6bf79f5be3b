"""The method contract: a distillation method is a module that turns one step's outputs into losses.

Methods never own a training loop. The engine runs the teacher (no grad, eval mode)
and the student with feature taps at the module names a method asks for, then calls
the method on a `StepOutputs`. A method's adapters (regressors, embedders, ...) are
its own submodules, so they train with the student and are saved in checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from kdforge.data.augment import PixelNormalization


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
    indices: torch.Tensor | None = None  # dataset indices of the batch (memory-bank methods)
    num_train_samples: int = 0  # size of the training set
    #: {loss key: outputs on the extra images that method asked for (`Method.extra_views`)}, forwarded with the batch
    views: dict[str, "StepOutputs"] = field(default_factory=dict)
    #: the outputs on the extra images of the method being called (`for_method`); None without any
    view: "StepOutputs | None" = None

    def for_method(self, key: str) -> "StepOutputs":
        """These outputs as the method of loss key `key` sees them: with its own extra view as `view`."""
        return dataclasses.replace(self, view=self.views.get(key))


class Method(nn.Module):
    """Base class of every loss/method; subclasses set the class attributes and `forward`.

    - `teacher_layers` / `student_layers`: tap strings (module names, optionally
      ``:input``) that the engine captures into `StepOutputs.*_features`.
    - `wrap_student(student, teacher)`: the network trained in place of the student (SimKD's).
    - `bind(student, teacher)`: resolve layer names (defaults for the pair, globs).
    - `extra_views(images, normalization)`: more images to forward with each training batch (SSKD's rotations, MLKD's strong view).
    - `setup(student, teacher, example)`: called once before training, with the
      outputs of a dry run on one batch, to build adapters from the real shapes.
    - `pretrain_epochs` / `pretrain_loss` / `pretrain_parameters`: a stage run before
      training (AB's initialisation, FT's paraphraser), through the same forward.
    - `loop_hooks(key)`: hooks the method adds to the training loop (its stage, its own
      classifier heads' evaluation); the loop tests no flags of the methods.
    - `forward(out)`: a loss tensor, or a dict of named loss tensors (summed).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    #: what the method taps when no layers are given, shown by `kdforge methods`
    default_taps: ClassVar[str] = "logits"
    #: the weight (beta) the method is usually given on CIFAR-100, shown by `kdforge methods`
    typical_weight: ClassVar[float] = 1.0
    #: default tap points for `bind` (a kind of `methods/default_taps.py`); None: the method binds itself
    layer_kind: ClassVar[str | None] = None
    #: epochs of a stage the engine runs before training (e.g. AB's initialisation); 0 for none
    pretrain_epochs: int = 0
    #: takes PURSUhInT hint layer pairs (a run's `hints:`) when its own layers are not given
    uses_hints: ClassVar[bool] = False
    #: can train data-parallel (DDP); false where the method keeps state per training image
    supports_distributed: ClassVar[bool] = True
    #: None where the method can distil with a token model (a vision transformer: its block outputs arrive as
    #: patch-token maps, its embedding is the pre-logits feature; `models/tokens.py`); else why it cannot
    token_models: ClassVar[str | None] = None
    #: parameters `kdforge tune` searches besides the loss weight (and T where the method has one):
    #: {name: (low, high)}, log scale for floats, every integer for ints (recipes/tune.py); a "weight" entry
    #: replaces the weight's usual range (10x either side of the usual weight)
    tunable: ClassVar[dict[str, tuple[float, float]]] = {}
    #: None where any student will do; else what the student must be (DeiT's: a transformer with a distillation
    #: token and head), shown by `kdforge methods`
    student_requirement: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.teacher_layers: list[str] = []
        self.student_layers: list[str] = []
        self._given_t: list[str] | None = None  # user-given layer names, resolved in `bind`
        self._given_s: list[str] | None = None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve layer names for these models (defaults, globs) before any forward pass.

        With `layer_kind` set, pairs the user's `teacher_layers`/`student_layers` (kept in
        `_given_t`/`_given_s`) or the models' defaults of that kind, narrowed by `pick_layers`.
        """
        if self.layer_kind is not None:
            from kdforge.methods.adapters import pair_layers

            self.teacher_layers, self.student_layers = pair_layers(
                self.name, student, teacher, self._given_t, self._given_s, self.layer_kind, pick=self.pick_layers)

    @property
    def wants_hints(self) -> bool:
        """A hint method whose layers the config does not name: it takes a run's hint pairs."""
        return self.uses_hints and not (self._given_t or self._given_s)

    def take_hints(self, teacher_layers: list[str], student_layers: list[str]) -> bool:
        """Use these (teacher, student) hint pairs if `wants_hints`; returns whether they were taken.

        Called before `bind`.
        """
        if not self.wants_hints:
            return False
        self._given_t, self._given_s = list(teacher_layers), list(student_layers)
        return True

    @staticmethod
    def pick_layers(names: list[str]) -> list[str]:
        """Which of the default layers of `layer_kind` to use (all by default)."""
        return names

    def wrap_student(self, student: nn.Module, teacher: nn.Module | None) -> nn.Module:
        """The network the run trains in place of `student` (before `bind`); `student` itself by default.

        SimKD's student classifies with a projector and the teacher's head, so it trains, is
        evaluated and is exported as one network that holds them.
        """
        return student

    def extra_views(self, images: torch.Tensor, normalization: PixelNormalization) -> torch.Tensor | None:
        """Extra training images (SSKD's rotated copies, MLKD's strong view) that both models run on with the
        batch, in one forward (BatchNorm sees them with it); their outputs reach the method as `out.view`.
        `images` are normalised as `normalization` says (its `to_unit` gives pixel values). None: none."""
        return None

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        """Build adapters from the shapes in `example`; nothing to do by default."""

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        """Loss of the stage before training (only called when `pretrain_epochs > 0`)."""
        raise NotImplementedError(f"{self.name} declares pretrain_epochs but no pretrain_loss")

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """What the stage before training optimises: the method's own adapters by default."""
        return list(self.parameters())

    def loop_hooks(self, key: str) -> list:
        """Hooks this method, as the loss `key`, adds to the training loop (`engine/hooks/`): its stage before
        training when `pretrain_epochs > 0`, and an `EvalHeadsHook` (the top-1 of each of its own classifier
        heads at every evaluation) when it overrides `eval_heads`."""
        hooks = []
        if self.pretrain_epochs > 0:
            from kdforge.engine.hooks.pretrain import PretrainStageHook

            hooks.append(PretrainStageHook(key, self))
        if type(self).eval_heads is not Method.eval_heads:
            from kdforge.engine.hooks.evaluation import EvalHeadsHook

            hooks.append(EvalHeadsHook(key, self))
        return hooks

    def eval_heads(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """{name: logits} of the method's own classifier heads on an evaluation batch (with `EvalHeadsHook`).

        `out` holds the images, labels, the trained network's logits and its taps; no teacher.
        """
        return {}

    def forward(self, out: StepOutputs) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
