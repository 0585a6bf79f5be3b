"""Liu, Li, Yuan, Wang, Li, Xu, Wu & Ye, "Exploring Inter-Channel Correlation for Diversity-Preserved
Knowledge Distillation", ICCV 2021 (ICKD-C; public code ADLab-AutoDrive/ICKD)."""

from __future__ import annotations

import torch
from torch import nn

from kdforge.methods.ab import conv1x1_bn
from kdforge.methods.adapters import require_dims
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.default_taps import last_layer
from kdforge.methods.registry import register_method
from kdforge.methods.sp import normalized_gram


def channel_correlation(features: torch.Tensor) -> torch.Tensor:
    """Per image, the C x C Gram matrix of the channels (each flattened over H x W), rows L2-normalised."""
    return normalized_gram(features.flatten(2))


def ickd_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """sum_b ||G_s,b - G_t,b||_F^2 / (C B), G the row-normalised channel correlations (same C; any H x W)."""
    b, c = f_t.shape[:2]
    return (channel_correlation(f_s) - channel_correlation(f_t)).pow(2).sum() / (c * b)


@register_method
class ICKD(Method):
    """Inter-channel correlation KD (Liu et al., ICCV 2021): match each image's channel correlation matrix.

    The student map first goes through an embedding to the teacher's channels (1x1 conv without bias +
    BatchNorm, as the authors' `Embed`; trained with the student), then
    L = sum_b ||G(e(F_s))_b - G(F_t)_b||_F^2 / (C_t B), with G the C x C Gram matrix of the channels
    flattened over space, each row L2-normalised. The maps' spatial sizes need not match.
    Default: the last stage end of both (post-ReLU; the authors' `feat[-2]`). The authors' CIFAR-100
    setting: CE 1 + 2.5 ICKD (their README; also with 1 KD beside it).
    """

    name = "ickd"
    paper = ("Liu et al., Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation, "
             "ICCV 2021")
    default_taps = "last stage end (+ 1x1 conv + BN embedding)"
    typical_weight = 2.5
    layer_kind = "stages"
    pick_layers = staticmethod(last_layer)

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None):
        super().__init__()
        self._given_t, self._given_s = teacher_layers, student_layers
        self.embeds = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        embeds = []
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t, s = example.teacher_features[t_name], example.student_features[s_name]
            require_dims(self.name, t_name, t, s_name, s, (4,), "feature maps (N, C, H, W)")
            embeds.append(conv1x1_bn(s.shape[1], t.shape[1]).to(s.device))
        self.embeds = nn.ModuleList(embeds)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        if len(self.embeds) != len(self.teacher_layers):
            raise RuntimeError("ickd: setup() was not called (no embeddings)")
        losses = [ickd_loss(embed(out.student_features[s]), out.teacher_features[t].detach())
                  for embed, t, s in zip(self.embeds, self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
