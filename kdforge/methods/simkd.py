"""Chen et al., "Knowledge Distillation with the Reused Teacher Classifier", CVPR 2022 (arXiv 2203.14001)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError, LayerError
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.default_taps import stage_ends
from kdforge.methods.registry import register_method
from kdforge.models.capabilities import model_record_of
from kdforge.models.simkd import SimKDNet

#: the student's tap: the projected map that the teacher's head reads (`SimKDNet.projector`)
PROJECTED = "projector"


@register_method
class SimKD(Method):
    """SimKD (Chen et al., CVPR 2022): align the projected last feature map with the teacher's; classify
    with the teacher's own head.

    Loss: mean((P(F_s) - F_t)^2) over every element (the authors' ``nn.MSELoss``), F_t the teacher's
    last stage output, P the projector of the student network `wrap_student` builds
    (`kdforge.models.simkd.SimKDNet`: the student's stages, P, the teacher's head frozen), which is
    what trains, is evaluated and is exported. Where the student's map is smaller than the teacher's,
    F_t is average-pooled to its size (the authors' rule). The authors train with this term alone
    (``-c 0 -d 0 -b 1``: no CE, no KD), weight 1; `factor` (2) divides the projector's middle width.
    """

    name = "simkd"
    paper = "Chen, Mei, Zhang, Wang, Feng & Chen, Knowledge Distillation with the Reused Teacher Classifier, CVPR 2022"
    default_taps = "last stage end, projected; the student classifies with the teacher's head"
    typical_weight = 1.0
    token_models = "it rebuilds zoo models (the student with the teacher's classifier) from their names"

    def __init__(self, factor: int = 2):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor: a positive integer, got {factor!r}")
        self.factor = factor

    def wrap_student(self, student: nn.Module, teacher: nn.Module | None) -> nn.Module:
        """The SimKD network that trains in place of `student` (`student` itself if it is one already)."""
        if isinstance(student, SimKDNet):
            return student
        if teacher is None:
            raise ConfigError("losses.simkd reuses the teacher's classifier: set teacher.checkpoint")
        records = [model_record_of(m) for m in (student, teacher)]
        if not all(records) or any(r.get("import") for r in records):
            raise ConfigError("losses.simkd: the student and the teacher must be zoo models (built by name) so "
                              "the SimKD student can be rebuilt from its checkpoint")
        s_rec, t_rec = records
        net = SimKDNet(student, teacher, s_rec["in_channels"], self.factor)
        net.zoo_record = {"name": "simkd", "num_classes": s_rec["num_classes"], "in_channels": s_rec["in_channels"],
                          "options": {"student": s_rec["name"], "student_options": dict(s_rec.get("options") or {}),
                                      "teacher": t_rec["name"], "teacher_options": dict(t_rec.get("options") or {}),
                                      "factor": self.factor}}
        return net

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if not isinstance(student, SimKDNet):
            raise LayerError("simkd: the student must be its SimKD network (projector + the teacher's head); "
                             "`losses.wrap_student(student, teacher)` builds it, as `kdforge train` does")
        self.teacher_layers = stage_ends(teacher)[-1:]
        self.student_layers = [PROJECTED]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s = out.student_features[PROJECTED].float()
        t = out.teacher_features[self.teacher_layers[0]].float()
        if t.shape[2:] != s.shape[2:]:
            t = F.adaptive_avg_pool2d(t, s.shape[2:])
        return F.mse_loss(s, t)
