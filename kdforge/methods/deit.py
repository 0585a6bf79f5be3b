"""Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, "Training data-efficient image transformers & distillation
through attention", ICML 2021 (arXiv:2012.12877)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.registry import register_method


@register_method
class DeiT(Method):
    """DeiT's distillation through a distillation token (Touvron et al., ICML 2021).

    The student is a vision transformer with two tokens that each have a head: the class token's
    (`cls_head`, timm's ``head``) learns from the labels, the distillation token's (`dist_head`, timm's
    ``head_dist``) from the teacher. With z_c, z_d the two heads' logits and z_t the teacher's:

    * ``kind: hard`` (the paper's best): L = 1/2 CE(z_c, y) + 1/2 CE(z_d, argmax z_t);
    * ``kind: soft``: L = (1 - lambda_kl) CE(z_c, y) + lambda_kl T^2 KL(softmax(z_t / T) || softmax(z_d / T)), the
      paper's tau = 3 and lambda = 0.1 by default. The KL is the paper's, averaged over the batch; the authors'
      public code divides the summed KL by the number of logits (batch x classes), a term C times smaller, so
      soft runs here do not match that code's scale (set lambda_kl to compare).

    At inference the network's output is the mean of the two heads, as the paper's and timm's distilled
    models return it (``*_distilled_*`` models of timm in their default mode; tests/tiny_vit.py with
    ``distilled``), so the trained student is evaluated and exported as one network. Use it alone
    (`losses: {deit: 1.0}`): it holds the label term. Not here: the paper's label smoothing and
    augmentations (set them in the run's data and losses if wanted).
    """

    name = "deit"
    paper = ("Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, Training data-efficient image transformers & "
             "distillation through attention, ICML 2021")
    needs_labels = True
    default_taps = "the student's class-token and distillation-token heads (head, head_dist)"
    typical_weight = 1.0
    student_requirement = "a vision transformer with a distillation token and its own head (timm's *_distilled_*)"

    def __init__(self, kind: Literal["hard", "soft"] = "hard", T: float = 3.0, lambda_kl: float = 0.1,
                 cls_head: str = "head", dist_head: str = "head_dist"):
        super().__init__()
        if kind not in ("hard", "soft"):
            raise ConfigError(f"deit.kind: 'hard' or 'soft', got {kind!r}")
        if T <= 0:
            raise ValueError(f"deit: temperature T must be positive, got {T}")
        if not 0 <= lambda_kl <= 1:
            raise ValueError(f"deit: lambda_kl must lie in [0, 1], got {lambda_kl}")
        self.kind, self.T, self.lambda_kl = kind, T, lambda_kl
        self.cls_head, self.dist_head = cls_head, dist_head

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        modules = dict(student.named_modules())
        missing = [name for name in (self.cls_head, self.dist_head) if name not in modules]
        if missing:
            raise ConfigError(f"losses.deit: the student has no module {missing[0]!r}: DeiT needs a vision "
                              f"transformer with a distillation token and its own head (timm's *_distilled_* "
                              f"models; or name them with cls_head / dist_head)")
        self.student_layers = [self.cls_head, self.dist_head]

    def heads(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        return out.student_features[self.cls_head].float(), out.student_features[self.dist_head].float()

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        z_cls, z_dist = self.heads(out)
        target = out.teacher_logits.detach().float()
        if self.kind == "hard":
            return {"cls_ce": 0.5 * F.cross_entropy(z_cls, out.labels),
                    "dist_ce": 0.5 * F.cross_entropy(z_dist, target.argmax(dim=1))}
        return {"cls_ce": (1 - self.lambda_kl) * F.cross_entropy(z_cls, out.labels),
                "dist_kl": self.lambda_kl * kd_loss(z_dist, target, self.T)}
