"""Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018
(as CRD's RepDistiller benchmark implements it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import LayerError
from kdforge.methods.adapters import require_same_channel_maps
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method

#: RBF bandwidth between consecutive layers' singular vectors (exp(-d^2 / 8), as RepDistiller)
RBF_SCALE = 8.0


def finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def top_singular(features: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, S): the first `n` right singular vectors (B, C, n) of each image's map as an (H*W) x C matrix, and
    its first `n` singular values (B, n), each L2-normalised (V over the channels, S over the n); in float32
    outside autocast, non-finite entries set to 0."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.float().flatten(2).transpose(1, 2)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = finite(vh.transpose(1, 2))[:, :, :n]
    return F.normalize(v, dim=1), F.normalize(finite(s)[:, :n], dim=1)


def align_to(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest |cosine| with it, signed to agree: (B, C, k_t)."""
    cosine = v_s.transpose(1, 2) @ v_t  # (B, k_s, k_t)
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ mask


def rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """exp(-(v_i - v_prev_j)^2 / 8) for every channel i of a layer and j of the layer before: (B, C, C_prev, k)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_SCALE)


@register_method
class KDSVD(Method):
    """KD-SVD (Lee et al., ECCV 2018): match how the dominant singular vectors of consecutive layers relate.

    Per tapped layer (every stage end, post-ReLU; RepDistiller's `feat[1:-1]`): the teacher's first k right
    singular vectors (k = 1) and the student's first k + 3, each student set aligned to the teacher's by
    largest |cosine| (with its sign), both scaled by the teacher's normalised singular values; for each
    pair of consecutive layers, RBF kernels between their vectors' entries (`rbf`), and the loss
    sum((K_s - K_t)^2) / B, summed over the pairs. The channel counts must agree layer by layer. The SVD
    runs in float32 outside autocast; non-finite values (SVD of degenerate maps) count 0, and a non-finite
    gradient reaching the student's maps is zeroed. Usual weight 1 (CE 1).
    """

    name = "kdsvd"
    paper = "Lee, Kim & Song, Self-supervised Knowledge Distillation Using Singular Value Decomposition, ECCV 2018"
    default_taps = "every stage end (same channels in both models)"
    typical_weight = 1.0
    layer_kind = "stages"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 k: int = 1):
        super().__init__()
        if k < 1:
            raise ValueError("kdsvd: k (singular vectors of the teacher) must be >= 1")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.k = k

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        if len(self.teacher_layers) < 2:
            raise LayerError(f"kdsvd: needs at least two layers per model, got {self.teacher_layers}")
        require_same_channel_maps(self.name, self.teacher_layers, self.student_layers, example,
                                  "KD-SVD aligns singular vectors of the same channels in both models")

    def forward(self, out: StepOutputs) -> torch.Tensor:
        losses, previous = [], None
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            f_s = out.student_features[s_name]
            if f_s.requires_grad:
                f_s.register_hook(finite)  # a degenerate SVD must not write NaN into the student
            v_t, s_t = top_singular(out.teacher_features[t_name].detach(), self.k)
            v_s, _ = top_singular(f_s, self.k + 3)
            v_s = align_to(v_s, v_t)
            scale = s_t.unsqueeze(1)
            v_t, v_s = v_t * scale, v_s * scale
            if previous is not None:
                k_s, k_t = rbf(v_s, previous[0]), rbf(v_t, previous[1])
                losses.append(finite((k_s - k_t).pow(2)).sum() / f_s.shape[0])
            previous = (v_s, v_t)
        return torch.stack(losses).sum()

    def extra_repr(self) -> str:
        return f"k={self.k}"
