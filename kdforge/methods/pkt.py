"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method

_EPS = 1e-7


def conditional_probabilities(features: torch.Tensor) -> torch.Tensor:
    """p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k), cosine kernel K = (cos + 1) / 2; diagonal 0."""
    x = F.normalize(features.float().flatten(1), p=2, dim=1)
    kernel = (x @ x.t() + 1.0) / 2.0
    off_diagonal = 1.0 - torch.eye(kernel.shape[0], device=kernel.device, dtype=kernel.dtype)
    kernel = kernel * off_diagonal
    return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(_EPS)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} p_t log(p_t / p_s), averaged over the B(B-1) ordered pairs."""
    b = f_s.shape[0]
    if b < 2:
        raise ValueError("pkt needs a batch of at least 2 samples")
    p_s, p_t = conditional_probabilities(f_s), conditional_probabilities(f_t)
    kl = p_t * (torch.log(p_t.clamp_min(_EPS)) - torch.log(p_s.clamp_min(_EPS)))
    return kl.sum() / (b * (b - 1))


@register_method
class PKT(Method):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): match similarity distributions.

    Each sample's neighbours get probabilities p_{j|i} proportional to the cosine kernel
    (cos(x_i, x_j) + 1) / 2 over the other samples of the batch (j != i, as in the paper);
    the loss is KL(teacher || student) summed over i and averaged over the B(B-1) pairs
    (so the usual weight 30000 of the CRD benchmark applies). Default: the embeddings
    (classifier inputs); their dimensions need not match.
    """

    name = "pkt"
    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"
    default_taps = "embedding"
    typical_weight = 30000.0
    layer_kind = "embedding"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None):
        super().__init__()
        self._given_t, self._given_s = teacher_layers, student_layers

    def forward(self, out: StepOutputs):
        losses = [pkt_loss(out.student_features[s], out.teacher_features[t].detach())
                  for t, s in zip(self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
