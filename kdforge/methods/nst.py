"""Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", 2017 (arXiv:1707.01219)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import require_dims, resample_to, smaller_size
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def poly_mmd(f_s: torch.Tensor, f_t: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    """Squared MMD between the channels of two maps, polynomial kernel (x.y + c)^d, mean over the batch.

    Each channel's spatial map is flattened and L2-normalised; a map larger than the
    other is adaptive-average-pooled to the smaller spatial size first.
    """
    f_s, f_t = f_s.float(), f_t.float()
    size = smaller_size(f_s, f_t)
    s = F.normalize(resample_to(f_s, size).flatten(2), dim=2)  # (B, C_s, HW)
    t = F.normalize(resample_to(f_t, size).flatten(2), dim=2)  # (B, C_t, HW)

    def kernel_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B,)
        return (x @ y.transpose(1, 2) + c).pow(degree).mean(dim=(1, 2))

    return (kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)).mean()


@register_method
class NST(Method):
    """Neuron selectivity transfer (Huang & Wang, 2017): MMD between channel activation distributions.

    Each channel's spatial map (L2-normalised) is a sample; the loss is the squared MMD
    between the teacher's and the student's channel sets with a polynomial kernel
    k(x, y) = (x.y + c)^degree (the paper's choice: degree 2, c 0), averaged over the batch,
    summed over layer pairs. Usual weight 50. Default layers: every stage end (post-ReLU),
    paired from the deepest; a larger map is adaptive-average-pooled to the smaller size.
    """

    name = "nst"
    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, arXiv 2017"
    default_taps = "stage ends, paired from the deepest"
    typical_weight = 50.0
    layer_kind = "stages"
    uses_hints = True

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 degree: int = 2, c: float = 0.0):
        super().__init__()
        if degree < 1:
            raise ValueError("nst: degree must be >= 1")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.degree, self.c = degree, c

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            require_dims(self.name, t_name, example.teacher_features[t_name],
                         s_name, example.student_features[s_name], (4,), "feature maps (N, C, H, W)")

    def forward(self, out: StepOutputs):
        losses = [poly_mmd(out.student_features[s], out.teacher_features[t].detach(), self.degree, self.c)
                  for t, s in zip(self.teacher_layers, self.student_layers)]
        return torch.stack(losses).sum()
