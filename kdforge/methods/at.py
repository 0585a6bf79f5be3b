"""Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (arXiv:1612.03928)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import require_dims, resample_to, smaller_size
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def attention_map(features: torch.Tensor, p: float) -> torch.Tensor:
    """Activation-based spatial attention: mean over channels of |F|^p, shape (N, H, W)."""
    return features.float().abs().pow(p).mean(dim=1)


def attention_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    """mean over batch and positions of (a_s - a_t)^2, a = L2-normalised flattened attention map.

    Maps of different spatial sizes: the larger map is average-pooled (adaptively) to the
    smaller one's size before normalising.
    """
    a_s, a_t = attention_map(f_s, p), attention_map(f_t, p)
    size = smaller_size(a_s, a_t)
    a_s = F.normalize(resample_to(a_s, size).flatten(1), dim=1)
    a_t = F.normalize(resample_to(a_t, size).flatten(1), dim=1)
    return (a_s - a_t).pow(2).mean()


@register_method
class AT(Method):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps.

    Loss: sum over layer pairs of mean_{batch, positions} (a_s - a_t)^2 with
    a = normalize(vec(mean_c |F|^p)), p = 2. The mean over positions is the paper's
    "beta divided by the number of elements of the attention map and the batch size";
    the paper's beta/2 is left to the weight (usual weight 1000, as in the CRD benchmark).
    Default layers: every stage end (post-ReLU), paired from the deepest. Attention maps of
    different spatial sizes: the larger one is adaptive-average-pooled to the smaller size
    (channel counts never need to match).
    """

    name = "at"
    paper = ("Zagoruyko & Komodakis, Paying More Attention to Attention: Improving the Performance of "
             "Convolutional Neural Networks via Attention Transfer, ICLR 2017")
    default_taps = "stage ends, paired from the deepest"
    typical_weight = 1000.0
    layer_kind = "stages"
    uses_hints = True

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 p: float = 2.0):
        super().__init__()
        if p <= 0:
            raise ValueError("at: p must be positive")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.p = p

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            require_dims(self.name, t_name, example.teacher_features[t_name],
                         s_name, example.student_features[s_name], (4,), "feature maps (N, C, H, W)")

    def forward(self, out: StepOutputs):
        losses = [attention_loss(out.student_features[s], out.teacher_features[t].detach(), self.p)
                  for t, s in zip(self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
