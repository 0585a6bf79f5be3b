"""Li, Li, Yang, Wang, Zhao, Cheng, Liang & Yang, "Curriculum Temperature for Knowledge Distillation",
AAAI 2023 (arXiv:2211.16231; public code zhengli97/CTKD)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.dkd import dkd_parts, warmup_factor
from kdforge.methods.kd import kd_loss
from kdforge.methods.registry import register_method
from kdforge.methods.logit_ops import logit_pair, scale_gradient


def curriculum_lambda(epoch: int, curriculum_epochs: int, lambda_max: float) -> float:
    """The reversal strength of (1-based) epoch e: lambda_max * (1 - cos(pi * min(e, E) / E)) / 2, rising from
    0 to lambda_max over E = `curriculum_epochs` (the authors' cosine schedule from 0 to -1, as a magnitude)."""
    e = min(max(epoch, 0), curriculum_epochs)
    return lambda_max * (1 - math.cos(math.pi * e / curriculum_epochs)) / 2


@register_method
class CTKD(Method):
    """KD (or DKD) at a learnable temperature that is trained adversarially, harder as training goes on.

    T = t_start + t_range * sigmoid(theta), theta one learnable scalar (starting at 1, trained by the run's
    optimizer). The distillation loss at T trains the student as usual, while theta's gradient passes a
    gradient-reversal layer with strength lambda(e) = `curriculum_lambda` (e the 1-based epoch), so T moves to
    *raise* the loss: an easy-to-hard curriculum. `base: kd` is Hinton's T^2 KL at T; `base: dkd` is
    DKD's alpha TCKD + beta NCKD at T (with its warm-up). The authors' CIFAR-100 setting: t_start 1,
    t_range 20, lambda rising to 1 over 10 of 240 epochs; KD as 0.1 CE + 0.9 CTKD, DKD as CE + CTKD.
    """

    name = "ctkd"
    paper = "Li et al., Curriculum Temperature for Knowledge Distillation, AAAI 2023"
    default_taps = "logits (KD or DKD at a learnable, adversarial temperature)"
    typical_weight = 0.9

    def __init__(self, base: str = "kd", t_start: float = 1.0, t_range: float = 20.0, curriculum_epochs: int = 10,
                 lambda_max: float = 1.0, alpha: float = 1.0, beta: float = 8.0, warmup: int = 20):
        super().__init__()
        if base not in ("kd", "dkd"):
            raise ValueError(f"ctkd: base must be 'kd' or 'dkd', got {base!r}")
        if t_start <= 0 or t_range < 0:
            raise ValueError("ctkd: t_start must be positive and t_range non-negative")
        if curriculum_epochs < 1 or lambda_max < 0:
            raise ValueError("ctkd: curriculum_epochs must be >= 1 and lambda_max >= 0")
        self.base, self.t_start, self.t_range = base, t_start, t_range
        self.curriculum_epochs, self.lambda_max = curriculum_epochs, lambda_max
        self.alpha, self.beta, self.warmup = alpha, beta, warmup
        self.theta = nn.Parameter(torch.ones(1))
        self.needs_labels = base == "dkd"

    def temperature(self, epoch: int) -> torch.Tensor:
        """T for the 0-based epoch `epoch`, with theta's gradient reversed at that epoch's strength."""
        strength = curriculum_lambda(epoch + 1, self.curriculum_epochs, self.lambda_max)
        return self.t_start + self.t_range * torch.sigmoid(scale_gradient(self.theta, -strength))

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s, t = logit_pair("ctkd", out)
        temperature = self.temperature(out.epoch).squeeze(0)
        t = t.detach()  # the teacher only teaches
        if self.base == "kd":
            return kd_loss(s, t, temperature)
        if out.labels is None:
            raise ValueError("ctkd with base dkd needs the labels of the batch")
        tckd, nckd = dkd_parts(s, t, out.labels, temperature)
        return warmup_factor(out.epoch, self.warmup) * (self.alpha * tckd + self.beta * nckd)

    def extra_repr(self) -> str:
        return (f"base={self.base}, T={self.t_start} + {self.t_range} sigmoid(theta), "
                f"curriculum_epochs={self.curriculum_epochs}, lambda_max={self.lambda_max}")
