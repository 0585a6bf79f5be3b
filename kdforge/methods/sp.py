"""Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv:1907.09682)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.default_taps import last_layer
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def normalized_gram(x: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the rows of `x` (..., n, d) -> (..., n, n), each row L2-normalised; in float32."""
    x = x.float()
    return F.normalize(x @ x.transpose(-1, -2), p=2, dim=-1)


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalised batch Gram matrix of the flattened activations, (B, B)."""
    return normalized_gram(features.flatten(1))


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||G_s - G_t||_F^2 / B^2 with row-normalised similarity matrices."""
    b = f_s.shape[0]
    return (similarity_matrix(f_s) - similarity_matrix(f_t)).pow(2).sum() / (b * b)


@register_method
class SP(Method):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): match the batch's pairwise similarity matrices.

    Loss: sum over layer pairs of ||norm_rows(Q_s Q_s^T) - norm_rows(Q_t Q_t^T)||_F^2 / B^2,
    Q = activations flattened per sample; the paper's gamma is the weight (usual 3000).
    Shapes never need to match (the matrices are B x B). Default: the last stage end of
    teacher and student (post-ReLU), as in the paper's CIFAR experiments.
    """

    name = "sp"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    default_taps = "last stage end"
    typical_weight = 3000.0
    layer_kind = "stages"
    uses_hints = True
    pick_layers = staticmethod(last_layer)

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None):
        super().__init__()
        self._given_t, self._given_s = teacher_layers, student_layers

    def forward(self, out: StepOutputs):
        losses = [sp_loss(out.student_features[s], out.teacher_features[t].detach())
                  for t, s in zip(self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
