"""Miles & Mikolajczyk, "Understanding the Role of the Projector in Knowledge Distillation", AAAI 2024
(arXiv:2303.11098; public code roymiles/Simple-Recipe-Distillation, also in torchdistill)."""

from __future__ import annotations

import torch
from torch import nn

from kdforge.methods.adapters import require_dims
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.default_taps import last_layer
from kdforge.methods.registry import register_method

#: the authors' BatchNorm epsilon (torchdistill's config and their ImageNet code)
BN_EPS = 1e-4


@register_method
class SRD(Method):
    """A simple recipe: a linear projector and batch-normalised features, plus KD.

    z = the last stage's output, globally average-pooled, for both models. The student's z goes through a
    linear projector to the teacher's width; both are batch-normalised without affine parameters (batch
    statistics, as the authors' loss modules in training mode). Returns
    {'feature': 2 * log(sum |BN(P z_s) - BN(z_t)|^p), 'kl': KD at T} with p = `exponent` (4) and T = 1,
    the authors' ImageNet setting (CE 1 + 1 SRD). The feature term is a log, so it can be negative.
    """

    name = "srd"
    paper = "Miles & Mikolajczyk, Understanding the Role of the Projector in Knowledge Distillation, AAAI 2024"
    default_taps = "last stage end, pooled (+ linear projector, BN without affine) and logits"
    typical_weight = 1.0
    layer_kind = "stages"
    pick_layers = staticmethod(last_layer)

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 exponent: float = 4.0, T: float = 1.0, feature_weight: float = 2.0):
        super().__init__()
        if exponent <= 0 or T <= 0 or feature_weight < 0:
            raise ValueError("srd: exponent and T must be positive, feature_weight non-negative")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.exponent, self.T, self.feature_weight = exponent, T, feature_weight
        self.projector: nn.Module | None = None
        self.bn_s: nn.Module | None = None
        self.bn_t: nn.Module | None = None

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        t_name, s_name = self.teacher_layers[0], self.student_layers[0]
        f_t, f_s = example.teacher_features[t_name], example.student_features[s_name]
        require_dims(self.name, t_name, f_t, s_name, f_s, (2, 4), "feature maps (N, C, H, W) or vectors (N, D)")
        dim_t, dim_s = f_t.shape[1], f_s.shape[1]
        self.projector = nn.Linear(dim_s, dim_t).to(f_s.device)
        self.bn_s = nn.BatchNorm1d(dim_t, eps=BN_EPS, affine=False).to(f_s.device)
        self.bn_t = nn.BatchNorm1d(dim_t, eps=BN_EPS, affine=False).to(f_s.device)

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if self.projector is None:
            raise RuntimeError("srd: setup() was not called (no projector)")

        def pooled(x: torch.Tensor) -> torch.Tensor:
            return x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float()

        z_s = self.projector(pooled(out.student_features[self.student_layers[0]]))
        z_t = pooled(out.teacher_features[self.teacher_layers[0]].detach())
        difference = (self.bn_s(z_s.float()) - self.bn_t(z_t)).abs().pow(self.exponent)
        feature = self.feature_weight * torch.log(difference.sum())
        return {"feature": feature, "kl": kd_loss(out.student_logits, out.teacher_logits.detach(), self.T)}

    def extra_repr(self) -> str:
        return f"exponent={self.exponent}, T={self.T}, feature_weight={self.feature_weight}"
