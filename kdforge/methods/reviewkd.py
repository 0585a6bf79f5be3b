"""Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (arXiv:2104.09044)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import expand_patterns
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.dkd import warmup_factor
from kdforge.methods.default_taps import embedding, pair_from_end, shape_error, stage_ends, stage_ends_preact
from kdforge.methods.registry import register_method

#: pooled sizes of the hierarchical context loss, each used only below the map's own size
HCL_LEVELS = (4, 2, 1)


def hcl_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one pair: MSE of the maps, and of their average pools to 4x4, 2x2 and 1x1
    (the levels smaller than the map), the k-th pooled level weighted 2^-k, divided by the sum of the weights."""
    f_s, f_t = f_s.float(), f_t.float()
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in HCL_LEVELS:
        if level >= f_s.shape[-2]:
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level))
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion: a student map (1x1 conv + BN to `mid` channels), fused with the deeper fused map
    by two per-pixel sigmoid gates, resized to the teacher's size, then 3x3 conv + BN to the teacher's channels.
    Returns (output matched to the teacher, fused map handed to the next, shallower ABF)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels))
        self.gates = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.out[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as the authors' code

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.gates is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            gate = self.gates(torch.cat([x, deeper], dim=1))
            x = x * gate[:, 0:1] + deeper * gate[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


def as_map(x: torch.Tensor) -> torch.Tensor:
    """A pooled feature vector (N, D) as a 1x1 map (N, D, 1, 1); maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


@register_method
class ReviewKD(Method):
    """Knowledge review (Chen et al., CVPR 2021): every teacher level learns from the student's level and all deeper.

    Student taps, shallow to deep (default: every stage end, post-ReLU, and the pooled embedding as a 1x1 map),
    are fused from the deepest up by `ABF` modules (residual learning across levels), and each fused output is
    compared with the teacher's tap at that level (default: every stage end before its ReLU, and the pooled
    embedding) by the hierarchical context loss `hcl_loss`; summed over levels, times the warm-up factor
    min(e / warmup, 1) (e the 1-based epoch). As mdistiller's ReviewKD: mid channels min(512, the deepest
    student tap's), nearest-neighbour resizing, the usual weight 1 with CE 1 (5 for resnet32x4 -> resnet8x4 in
    its CIFAR-100 config), 20 warm-up epochs of 240. Lists of different lengths are paired from the deepest.
    """

    name = "reviewkd"
    paper = "Chen, Liu, Zhao & Jia, Distilling Knowledge via Knowledge Review, CVPR 2021"
    default_taps = "every stage end (teacher pre-ReLU) and the embedding (+ ABF fusion)"
    typical_weight = 1.0

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 warmup: int = 20, max_mid_channels: int = 512):
        super().__init__()
        if warmup < 0:
            raise ValueError("reviewkd: warmup (epochs) must be >= 0; 0 turns the warm-up off")
        if max_mid_channels < 1:
            raise ValueError("reviewkd: max_mid_channels must be positive")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.warmup, self.max_mid_channels = warmup, max_mid_channels
        self.abfs = nn.ModuleList()
        self.out_sizes: list[tuple[int, int]] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is None:
            raise LayerError("reviewkd: needs a teacher model to tap")
        t = expand_patterns(teacher, self._given_t) if self._given_t else stage_ends_preact(teacher) + embedding(teacher)
        s = expand_patterns(student, self._given_s) if self._given_s else stage_ends(student) + embedding(student)
        if len(t) != len(s):
            if self._given_t or self._given_s:
                raise LayerError(f"reviewkd: {len(t)} teacher layer(s) {t} and {len(s)} student layer(s) {s}; "
                                 f"give teacher_layers and student_layers of the same length")
            t, s = pair_from_end(t, s)
        self.teacher_layers, self.student_layers = t, s

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        pairs = [(as_map(example.teacher_features[t]), as_map(example.student_features[s]), t, s)
                 for t, s in zip(self.teacher_layers, self.student_layers)]
        for f_t, f_s, t, s in pairs:
            if f_t.dim() != 4 or f_s.dim() != 4:
                raise shape_error(self.name, t, f_t, s, f_s, "reviewkd needs feature maps or pooled vectors")
        mid = min(self.max_mid_channels, pairs[-1][1].shape[1])
        last = len(pairs) - 1
        self.abfs = nn.ModuleList(ABF(f_s.shape[1], mid, f_t.shape[1], fuse=i < last).to(f_s.device)
                                  for i, (f_t, f_s, _, _) in enumerate(pairs))
        self.out_sizes = [tuple(f_t.shape[-2:]) for f_t, _, _, _ in pairs]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        if len(self.abfs) != len(self.teacher_layers):
            raise RuntimeError("reviewkd: setup() was not called (no fusion modules)")
        deeper, total = None, None
        for i in reversed(range(len(self.abfs))):  # from the deepest level up
            fused, deeper = self.abfs[i](as_map(out.student_features[self.student_layers[i]]), deeper,
                                         self.out_sizes[i])
            loss = hcl_loss(fused, as_map(out.teacher_features[self.teacher_layers[i]]).detach())
            total = loss if total is None else total + loss
        return warmup_factor(out.epoch, self.warmup) * total

    def extra_repr(self) -> str:
        return f"warmup={self.warmup}, levels={len(self.teacher_layers)}"
