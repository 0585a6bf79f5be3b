"""Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method

_EPS = 1e-12


def _differences(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diff[j, i] = e_i - e_j (N, N, D) and the distances |e_i - e_j| (N, N) of the rows of `e`.

    Explicit differences rather than Gram-matrix identities (|a|^2 + |b|^2 - 2ab), which cancel
    badly when a matmul runs in bf16 or TF32. Call with autocast off.
    """
    e = e.float().flatten(1)
    diff = e[None, :, :] - e[:, None, :]
    dist = diff.pow(2).sum(dim=-1).clamp_min(_EPS).sqrt()  # clamped: finite gradient on the diagonal
    return diff, dist


def _off_diagonal(n: int, device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def _no_autocast(x: torch.Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def distance_potentials(e: torch.Tensor) -> torch.Tensor:
    """psi_D for every ordered pair i != j: ||e_i - e_j|| / mu, mu = mean distance over those pairs."""
    with _no_autocast(e):
        _, dist = _differences(e)
        d = dist[_off_diagonal(e.shape[0], e.device)]
        return d / d.mean().clamp_min(_EPS)


def angle_potentials(e: torch.Tensor) -> torch.Tensor:
    """psi_A = cos of the angle at e_j between e_i and e_k, for every ordered triplet of distinct i, j, k.

    cos[j, i, k] = <e_i - e_j, e_k - e_j> / (|e_i - e_j| |e_k - e_j|); returned flattened over
    the triplets with i, j, k pairwise different.
    """
    with _no_autocast(e):
        diff, dist = _differences(e)
        unit = diff / dist[:, :, None]
        cos = torch.bmm(unit, unit.transpose(1, 2))  # [j, i, k]
        n = e.shape[0]
        idx = torch.arange(n, device=e.device)
        distinct = ((idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :])
                    & (idx[None, :, None] != idx[None, None, :]))
        return cos[distinct]


def rkd_distance_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Huber (delta 1) between distance potentials, averaged over ordered pairs i != j."""
    with torch.no_grad():
        t = distance_potentials(f_t)
    return F.smooth_l1_loss(distance_potentials(f_s), t, beta=1.0)


def rkd_angle_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Huber (delta 1) between angle potentials, averaged over ordered triplets of distinct samples."""
    with torch.no_grad():
        t = angle_potentials(f_t)
    return F.smooth_l1_loss(angle_potentials(f_s), t, beta=1.0)


@register_method
class RKD(Method):
    """Relational KD (Park et al., CVPR 2019): match distances and angles between the samples of a batch.

    Loss = distance_weight * L_D + angle_weight * L_A on the embeddings (the classifier's
    input; any tapped tensor is flattened per sample), returned as the parts 'distance' and
    'angle' so both are logged. L_D: Huber (delta 1) between ||e_i - e_j|| / mu of student
    and teacher, mu the batch's mean distance, averaged over the ordered pairs i != j. L_A:
    Huber between cos(angle e_i e_j e_k) of student and teacher, averaged over ordered triplets
    of distinct samples (RepDistiller averages over all B^2 / B^3 entries, degenerate ones
    included, which scales the parts by (B-1)/B and about (B-1)(B-2)/B^2). No adapter:
    distances and angles do not depend on the dimension. Computed in float32 with autocast
    off, from explicit differences (memory B^2 x D). Defaults as in the paper: weights 25
    and 50; usual method weight 1 (with ce 1).
    """

    name = "rkd"
    paper = "Park, Kim, Lu & Cho, Relational Knowledge Distillation, CVPR 2019"
    default_taps = "embedding (classifier input)"
    typical_weight = 1.0
    layer_kind = "embedding"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError("rkd: distance_weight and angle_weight must be >= 0")
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("rkd: distance_weight and angle_weight are both 0")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        from kdforge.methods.default_taps import shape_error

        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t, s = example.teacher_features[t_name], example.student_features[s_name]
            if t.dim() < 2 or s.dim() < 2 or t.shape[0] != s.shape[0]:
                raise shape_error(self.name, t_name, t, s_name, s, "both need a batch dimension of the same size")

    def forward(self, out: StepOutputs):
        parts: dict[str, torch.Tensor] = {}
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            f_t = out.teacher_features[t_name].detach()
            f_s = out.student_features[s_name]
            if f_s.shape[0] < 3:
                raise ValueError(f"rkd: needs a batch of at least 3 samples, got {f_s.shape[0]}")
            if self.distance_weight:
                loss = self.distance_weight * rkd_distance_loss(f_s, f_t)
                parts["distance"] = parts["distance"] + loss if "distance" in parts else loss
            if self.angle_weight:
                loss = self.angle_weight * rkd_angle_loss(f_s, f_t)
                parts["angle"] = parts["angle"] + loss if "angle" in parts else loss
        return parts
