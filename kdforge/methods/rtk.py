"""Yang, Kao & Huang, "Representative Teacher Keys for Knowledge Distillation Model Compression
Based on Attention Mechanism for Image Classification" (arXiv:2206.12788, 2022).

The paper is public; this implementation is our reading of its abstract and introduction only:
RTK weighs teacher and student feature maps by their similarity and filters out useless teacher
information. Every mechanism below (roles, top-k / threshold masking, temperature, the loss and
its n_t / n_s scale) is our interpretation, built on AFD (`afd.py`); docs/rtk.md lists them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.afd import AFD, LayerAttention, value_distances
from kdforge.methods.base import StepOutputs
from kdforge.methods.registry import register_method


def representative_keys(logits: torch.Tensor, top_k: int, threshold: float) -> torch.Tensor:
    """Boolean mask (N, n_s, n_t) of the teacher keys each student query keeps: its `top_k` highest
    logits, and of those only keys whose full-softmax weight is at least `threshold` (the best key
    is always kept)."""
    k = min(top_k, logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    if threshold > 0:
        keep &= F.softmax(logits, dim=-1) >= threshold
        keep.scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)
    return keep


@register_method
class RTK(AFD):
    """Representative teacher keys (our interpretation): every student layer attends over the
    teacher layers and learns only from its representative ones.

    Roles are reversed against AFD: student layer s asks (query), teacher layers answer (keys),
    logits = `LayerAttention`(student, teacher) / temperature. For each student layer and image,
    only the `top_k` most similar teacher keys are kept, and with `threshold` > 0 only those among
    them whose full-softmax weight reaches it; the others are masked out before the softmax, so they
    get exactly zero weight and no gradient. Loss: mean over the batch of
    (n_t / n_s) * sum_s sum_{t kept} alpha[s, t] * mean_positions (v(F_s) - v(F_t))^2 (v as in AFD).
    With top_k >= the number of teacher layers and threshold 0 it is full attention.

    Scale (our choice): RTK's weights sum to 1 per student layer, AFD's per teacher layer, so the
    unscaled sum would be n_s / n_t of AFD's at equal weight (1/3 for WRN-40-2 -> WRN-16-2). The
    factor n_t / n_s makes it n_t times the mean over student layers, as AFD is n_t times the mean
    over teacher layers: with uniform weights both equal (1 / n_s) sum_{s,t} D[s, t], so the same
    `weight` (AFD's 200) means the same loss scale.
    """

    name = "rtk"
    paper = ("Yang, Kao & Huang, Representative Teacher Keys for Knowledge Distillation Model Compression "
             "Based on Attention Mechanism for Image Classification, arXiv:2206.12788 (2022)")
    default_taps = "AFD's layers (per family, as the official AFD code); each student layer keeps its top-k keys"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 dim: int = 128, top_k: int = 2, threshold: float = 0.0, temperature: float = 1.0):
        super().__init__(teacher_layers, student_layers, dim)
        if top_k < 1:
            raise ValueError(f"rtk: top_k must be at least 1, got {top_k}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"rtk: threshold must be in [0, 1), got {threshold}")
        if temperature <= 0:
            raise ValueError(f"rtk: temperature must be positive, got {temperature}")
        self.top_k, self.threshold, self.temperature = top_k, threshold, temperature

    def _attention(self, teacher_channels: list[int], student_channels: list[int]) -> LayerAttention:
        return LayerAttention(student_channels, teacher_channels, self.dim)  # student layers ask

    def layer_weights(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, kept), both (N, n_s, n_t): rows are student layers, columns teacher layers."""
        s_feats, t_feats = self._features(out)
        logits = self.attention(s_feats, t_feats) / self.temperature
        keep = representative_keys(logits.detach(), self.top_k, self.threshold)
        return F.softmax(logits.masked_fill(~keep, float("-inf")), dim=2), keep

    def weight_axes(self) -> tuple[list[str], list[str]]:
        return self.student_layers, self.teacher_layers

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s_feats, t_feats = self._features(out)
        alpha, keep = self.layer_weights(out)
        weighted = (alpha * value_distances(s_feats, t_feats)).masked_fill(~keep, 0.0)
        return weighted.sum(dim=(1, 2)).mean() * (len(t_feats) / len(s_feats))  # AFD's scale, see the class doc
