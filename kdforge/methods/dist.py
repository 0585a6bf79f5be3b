"""Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (arXiv:2205.10536)."""

from __future__ import annotations

import torch

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.logit_ops import check_temperature, logit_pair, pearson, soften
from kdforge.methods.registry import register_method


def dist_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               standardized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra), each T^2 * (1 - mean Pearson correlation) of the softened probabilities, in float32:
    inter across the classes of each image, intra across the batch for each class."""
    t = temperature
    p_s = torch.softmax(soften(student_logits, t, standardized), dim=1)
    p_t = torch.softmax(soften(teacher_logits, t, standardized), dim=1)
    inter = (1 - pearson(p_s, p_t).mean()) * (t * t)
    intra = (1 - pearson(p_s.t(), p_t.t()).mean()) * (t * t)
    return inter, intra


@register_method
class DIST(Method):
    """DIST: match the teacher's relations, not its exact probabilities: beta * inter + gamma * intra.

    inter = T^2 (1 - mean_i rho(p_s,i, p_t,i)) with rho the Pearson correlation over the classes of
    image i; intra = T^2 (1 - mean_c rho(p_s,:c, p_t,:c)) over the batch for class c; p = softmax(z / T).
    Returns {'inter', 'intra'} (logged as `dist/inter`, `dist/intra`). The authors' CIFAR-100 setting
    (public code, dist_cifar.yaml): CE 1 + 2 * DIST with beta = gamma = 1, T = 4 (ImageNet: T = 1).
    The intra term needs a batch of at least two images. `standardize: true` z-scores the logits first.
    """

    name = "dist"
    paper = "Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, NeurIPS 2022"
    default_taps = "logits"
    typical_weight = 2.0
    tunable = {"beta": (0.25, 4.0), "gamma": (0.25, 4.0)}

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, T: float = 4.0, standardize: bool = False):
        super().__init__()
        check_temperature("dist", T)
        if beta < 0 or gamma < 0:
            raise ValueError("dist: beta and gamma must be non-negative")
        self.beta, self.gamma, self.T, self.standardize = beta, gamma, T, standardize

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        s, t = logit_pair("dist", out)
        inter, intra = dist_parts(s, t.detach(), self.T, self.standardize)  # the teacher only teaches
        return {"inter": self.beta * inter, "intra": self.gamma * intra}

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, T={self.T}" + (", standardize=True" if self.standardize else "")
