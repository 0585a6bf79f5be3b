"""Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019 (arXiv:1904.01802)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import embedding_maps
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def correlation_matrix(features: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """(B, B) Gaussian-RBF correlations of L2-normalised embeddings, by a Taylor series of order `order`.

    For unit vectors exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x.y), and
    exp(2 gamma x.y) ~ sum_{p=0}^{P} (2 gamma x.y)^p / p!.
    """
    x = F.normalize(features.float().flatten(1), p=2, dim=1)
    sim = x @ x.t()
    series = torch.zeros_like(sim)
    for p in range(order + 1):
        series = series + (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return math.exp(-2.0 * gamma) * series


def cc_loss(f_s: torch.Tensor, f_t: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """||C_t - C_s||^2 / B^2 (the mean over the B x B correlation entries)."""
    return (correlation_matrix(f_s, gamma, order) - correlation_matrix(f_t, gamma, order)).pow(2).mean()


@register_method
class CC(Method):
    """Correlation congruence (Peng et al., ICCV 2019): match instance-correlation matrices of embeddings.

    Correlations use a Gaussian RBF kernel on L2-normalised embeddings, approximated by a
    Taylor series of order `order` (paper: gamma 0.4, P 2); the loss is the mean squared
    difference of the B x B matrices. The student's embedding goes through a trainable
    linear map to the teacher's dimension when the dimensions differ (`embed: null`), always
    (`true`) or never (`false`). Usual weight 0.02 (CRD benchmark); this loss is the paper's
    CC term only: combine it with `ce` (and `kd`) as the paper does.
    """

    name = "cc"
    paper = ("Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang, Correlation Congruence for Knowledge "
             "Distillation, ICCV 2019")
    default_taps = "embedding"
    typical_weight = 0.02
    #: the weight's search range is wider than tune's usual 10x around 0.02: that weight belongs to RepDistiller's
    #: CC form (a loss near 1 at the start), ours starts near 3e-4 (RESULTS, "Every method on Fashion-MNIST")
    tunable = {"weight": (0.002, 300.0), "gamma": (0.1, 2.0)}
    layer_kind = "embedding"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 gamma: float = 0.4, order: int = 2, embed: bool | None = None):
        super().__init__()
        if gamma <= 0:
            raise ValueError("cc: gamma must be positive")
        if order < 0:
            raise ValueError("cc: order (of the Taylor series) must be >= 0")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.gamma, self.order, self.embed = gamma, order, embed
        self.embeds = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        self.embeds = nn.ModuleList(embedding_maps(self.teacher_layers, self.student_layers, example, self.embed))

    def forward(self, out: StepOutputs):
        if len(self.embeds) != len(self.student_layers):
            raise RuntimeError("cc: setup() was not called")
        losses = [cc_loss(embed(out.student_features[s]), out.teacher_features[t].detach(), self.gamma, self.order)
                  for embed, t, s in zip(self.embeds, self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
