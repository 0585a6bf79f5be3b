"""Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017 (the FSP matrix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import expand_patterns
from kdforge.methods.ab import parameters_feeding
from kdforge.methods.adapters import require_same_channel_maps
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.default_taps import pair_from_end, stage_ends
from kdforge.methods.registry import register_method


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The flow between two maps: G[b, j, i] = mean over positions of top_j * bottom_i, (B, C_top, C_bottom),
    in float32; the larger map is first average-pooled to the smaller's size."""
    bottom, top = bottom.float(), top.float()
    if bottom.shape[-2:] != top.shape[-2:]:
        size = min(bottom.shape[-2], top.shape[-2]), min(bottom.shape[-1], top.shape[-1])
        bottom, top = F.adaptive_avg_pool2d(bottom, size), F.adaptive_avg_pool2d(top, size)
    return torch.einsum("bihw,bjhw->bji", bottom, top) / (top.shape[-2] * top.shape[-1])


def default_fsp_taps(model: nn.Module) -> list[str]:
    """The stem's output (the first stage's input) and every stage end, shallow to deep."""
    stages = stage_ends(model)
    return [f"{stages[0]}:input", *stages]


@register_method
class FSP(Method):
    """Flow of solution procedure (Yim et al., CVPR 2017): match the Gram matrices between consecutive layers.

    For consecutive taps (l, l+1) of each model, the FSP matrix `fsp_matrix`; loss = sum over the flows of the
    mean squared difference of student and teacher matrices (the channel counts of each tap must agree between
    the two models). As the paper and CRD's RepDistiller benchmark, FSP is an initialisation: the stage before
    training (`pretrain_epochs`, 30 of 240 in the benchmark) trains the student's layers up to its deepest tap
    on the FSP loss alone; training then runs with CE and FSP weight 0 (typical_weight 0; a non-zero weight
    also adds it during training). Default taps: the stem output and every stage end (RepDistiller's
    `feat[:-1]`), post-ReLU; lists of different lengths are paired from the deepest.
    """

    name = "fsp"
    paper = ("Yim, Joo, Bae & Kim, A Gift from Knowledge Distillation: Fast Optimization, Network Minimization "
             "and Transfer Learning, CVPR 2017")
    default_taps = "the stem output and every stage end (same channels in both models); initialisation stage"
    typical_weight = 0.0
    pretrain_epochs = 30

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 pretrain_epochs: int = 30):
        super().__init__()
        if pretrain_epochs < 0:
            raise ValueError("fsp: pretrain_epochs must be >= 0")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.pretrain_epochs = pretrain_epochs
        self._pretrain_names: list[str] | None = None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is None:
            raise LayerError("fsp: needs a teacher model to tap")
        t = expand_patterns(teacher, self._given_t) if self._given_t else default_fsp_taps(teacher)
        s = expand_patterns(student, self._given_s) if self._given_s else default_fsp_taps(student)
        if len(t) != len(s):
            if self._given_t or self._given_s:
                raise LayerError(f"fsp: {len(t)} teacher layer(s) {t} and {len(s)} student layer(s) {s}; give "
                                 f"teacher_layers and student_layers of the same length")
            t, s = pair_from_end(t, s)
        if len(t) < 2:
            raise LayerError(f"fsp: needs at least two layers per model (a flow runs between two), got {t} and {s}")
        self.teacher_layers, self.student_layers = t, s

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        require_same_channel_maps(self.name, self.teacher_layers, self.student_layers, example,
                                  "FSP matrices need the same channels in both models, or use another method")
        if student is not None:
            self._pretrain_names = parameters_feeding(student, list(dict.fromkeys(self.student_layers)),
                                                      example.images)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        t = [out.teacher_features[name].detach() for name in self.teacher_layers]
        s = [out.student_features[name] for name in self.student_layers]
        losses = [(fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])).pow(2).mean() for i in range(len(s) - 1)]
        return torch.stack(losses).sum()

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        return self(out)

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student's parameters that feed its tapped layers."""
        if self._pretrain_names is None:
            raise RuntimeError("fsp: setup() must run before the initialisation stage")
        wanted = set(self._pretrain_names)
        return [p for n, p in student.named_parameters() if n in wanted]
