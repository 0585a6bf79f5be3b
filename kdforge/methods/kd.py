"""Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2015 (arXiv:1503.02531)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.logit_ops import check_temperature, soften
from kdforge.methods.registry import register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            standardized: bool = False) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch; computed in float32.

    `standardized`: both models' logits z-scored per image first (logit standardisation).
    Gradients reach both inputs; callers whose target only teaches detach it (`KD` does; SFTN's
    KL trains its teacher through the target by design)."""
    t = temperature
    log_p_student = F.log_softmax(soften(student_logits, t, standardized), dim=1)
    log_p_teacher = F.log_softmax(soften(teacher_logits, t, standardized), dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


@register_method
class KD(Method):
    """Soft-target distillation: match the teacher's temperature-softened class distribution.

    The usual CIFAR-100 setting is weight 0.9 with `ce` weight 0.1 and T = 4. `standardize: true`
    z-scores both models' logits before softening (Sun et al., CVPR 2024; their CIFAR-100 setting:
    weight 9 with `ce` 0.1, T = 2).
    """

    name = "kd"
    typical_weight = 0.9
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"

    def __init__(self, T: float = 4.0, standardize: bool = False):
        super().__init__()
        check_temperature("kd", T)
        self.T, self.standardize = T, standardize

    def forward(self, out: StepOutputs):
        return kd_loss(out.student_logits, out.teacher_logits.detach(), self.T,  # the teacher only teaches
                       self.standardize)
