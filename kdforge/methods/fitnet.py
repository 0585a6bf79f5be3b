"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv:1412.6550)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import ConvRegressor, LinearEmbed
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.default_taps import shape_error
from kdforge.methods.registry import register_method


def _middle(names: list[str]) -> list[str]:
    return [names[len(names) // 2]]


@register_method
class FitNet(Method):
    """FitNets hints (Romero et al., ICLR 2015): MSE between a regressed student map and the teacher's.

    Loss: sum over hint pairs of mean((r(F_s) - F_t)^2), r = a trainable regressor to the
    teacher's shape (conv + BN, see `adapters.ConvRegressor`; a linear map for vectors).
    Default hint pair: the middle stage end (index len//2 of the stage list, as in CRD's
    benchmark) of teacher and student, taken before its ReLU. Usual weight: 100 (with ce 1).
    The paper's separate hint stage (train the student up to the guided layer, plus the
    regressor, with the hint loss alone) is `pretrain_epochs` (0 by default: joint training
    as in the CRD/RepDistiller benchmark).
    """

    name = "fitnet"
    paper = "Romero, Ballas, Kahou, Chassang, Gatta & Bengio, FitNets: Hints for Thin Deep Nets, ICLR 2015"
    default_taps = "middle stage end (pre-ReLU)"
    typical_weight = 100.0
    layer_kind = "stages_preact"
    uses_hints = True
    pick_layers = staticmethod(_middle)

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 bn: bool = True, pretrain_epochs: int = 0):
        super().__init__()
        if pretrain_epochs < 0:
            raise ValueError("fitnet: pretrain_epochs must be >= 0")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.bn = bn
        self.pretrain_epochs = pretrain_epochs
        self.regressors = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        regressors = []
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t = example.teacher_features[t_name]
            s = example.student_features[s_name]
            if t.dim() == 4 and s.dim() == 4:
                reg = ConvRegressor(s.shape[1], t.shape[1], tuple(s.shape[2:]), tuple(t.shape[2:]), bn=self.bn)
            elif t.dim() == 2 and s.dim() == 2:
                reg = LinearEmbed(s.shape[1], t.shape[1])
            else:
                raise shape_error(self.name, t_name, t, s_name, s,
                                  "a hint pair must be two feature maps (N, C, H, W) or two vectors (N, D)")
            regressors.append(reg.to(s.device))
        self.regressors = nn.ModuleList(regressors)

    def hint_loss(self, out: StepOutputs) -> torch.Tensor:
        total = None
        for reg, t_name, s_name in zip(self.regressors, self.teacher_layers, self.student_layers):
            f_t = out.teacher_features[t_name].detach().float()
            f_s = reg(out.student_features[s_name]).float()
            loss = F.mse_loss(f_s, f_t)
            total = loss if total is None else total + loss
        if total is None:
            raise RuntimeError("fitnet: setup() was not called (no regressors)")
        return total

    def forward(self, out: StepOutputs):
        return self.hint_loss(out)

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        return self.hint_loss(out)

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student and the regressors: only the layers up to the guided ones get gradients."""
        return list(student.parameters()) + list(self.parameters())
