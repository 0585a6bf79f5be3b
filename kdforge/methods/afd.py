"""Ji, Heo & Park, "Show, Attend and Distill: Knowledge Distillation via Attention-based Feature
Matching", AAAI 2021 (arXiv:2102.02973).

Shared with `rtk`: `LayerAttention` (learned attention logits between two sets of layers) and
`value_distances` (how far every student layer's spatial attention map is from every teacher
layer's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import LayerError
from kdforge.methods.adapters import require_dims, resample_to
from kdforge.methods.at import attention_map
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def attention_value(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H*W) value of a feature map at `size`: mean_c F^2, adaptive-average-resampled to `size`,
    flattened and L2-normalised."""
    return F.normalize(resample_to(attention_map(features, 2.0), size).flatten(1), dim=1)


def value_distances(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """D[b, s, t] = mean over teacher positions of (v(F_s at t's size) - v(F_t))^2, shape (N, n_s, n_t).

    Every student map is resampled to each teacher map's spatial size (once per distinct size).
    """
    columns = []
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for f_t in teacher:
        size = tuple(f_t.shape[-2:])
        if size not in by_size:
            by_size[size] = torch.stack([attention_value(f_s, size) for f_s in student], dim=1)  # (N, n_s, HW)
        v_t = attention_value(f_t, size)
        columns.append((by_size[size] - v_t[:, None]).pow(2).mean(dim=2))
    return torch.stack(columns, dim=2)


class LayerAttention(nn.Module):
    """Attention logits (N, n_q, n_k) between `n_q` query layers and `n_k` key layers (AFD's module).

    query_q = BN(Linear(GAP(F_q))); every key layer gives one key per query layer through a
    bilinear projection, key_{k,q} = BN(Linear(ReLU(BN(Linear(GAP(F_k))))))[q]; learned positional
    embeddings p_q, p_k; logit[q, k] = (query_q . key_{k,q} + p_q . p_k) / sqrt(dim).
    """

    def __init__(self, query_channels: Sequence[int], key_channels: Sequence[int], dim: int = 128):
        super().__init__()
        n_q = len(query_channels)
        self.dim = dim
        self.queries = nn.ModuleList([nn.Sequential(nn.Linear(c, dim), nn.BatchNorm1d(dim)) for c in query_channels])
        self.keys = nn.ModuleList([nn.Sequential(nn.Linear(c, dim), nn.BatchNorm1d(dim), nn.ReLU())
                                   for c in key_channels])
        self.bilinear = nn.Sequential(nn.Linear(dim, dim * n_q), nn.BatchNorm1d(dim * n_q))
        self.pos_query = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_q, dim)))
        self.pos_key = nn.Parameter(nn.init.xavier_normal_(torch.empty(len(key_channels), dim)))

    def forward(self, query_features: Sequence[torch.Tensor], key_features: Sequence[torch.Tensor]) -> torch.Tensor:
        n, n_q, n_k = query_features[0].shape[0], len(self.queries), len(self.keys)
        query = torch.stack([head(f.mean(dim=(2, 3))) for head, f in zip(self.queries, query_features)], dim=1)
        key = torch.stack([head(f.mean(dim=(2, 3))) for head, f in zip(self.keys, key_features)], dim=1)
        key = self.bilinear(key.flatten(0, 1)).view(n, n_k, n_q, self.dim)
        with torch.autocast(query.device.type, enabled=False):  # fp32 logits: RTK's top-k must not hinge on rounding
            logits = torch.einsum("bkqd,bqd->bqk", key.float(), query.float())
            return (logits + self.pos_query.float() @ self.pos_key.float().t()) / math.sqrt(self.dim)


@register_method
class AFD(Method):
    """Attention-based feature distillation: every teacher layer attends over all student layers.

    For teacher layer t, alpha[t, :] = softmax over student layers of `LayerAttention` logits
    (teacher layers ask, student layers answer); loss = mean over the batch of
    sum_t sum_s alpha[t, s] * mean_positions (v(F_s) - v(F_t))^2, with v the L2-normalised
    channel mean of F^2 and the student's map resampled to the teacher's size: a sum over the
    n_t teacher layers of one convex combination each, as the official code (so its scale is
    n_t times a typical distance; `rtk` is scaled to match). The usual setting is
    CE + 0.9 KD (T = 4) + 200 AFD. Default layers, per family as in the official code
    (`layers.attention_taps`): WRN the BN-ReLU'd features, ResNets their block outputs
    (ResNet-110 every second block).
    """

    name = "afd"
    paper = ("Ji, Heo & Park, Show, Attend and Distill: Knowledge Distillation via Attention-based "
             "Feature Matching, AAAI 2021")
    default_taps = ("the official AFD code's layers (WRN: BN-ReLU'd block features; ResNet: block outputs, "
                    "ResNet-110 every second), all pairs weighted by attention")
    typical_weight = 200.0
    layer_kind = "attention"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 dim: int = 128):
        super().__init__()
        if dim < 1:
            raise ValueError(f"{self.name}: dim must be a positive integer, got {dim}")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.dim = dim
        self.attention: LayerAttention | None = None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Teacher and student layers, each side on its own (every pair is weighted, none is fixed)."""
        from kdforge.methods.default_taps import resolve_layers

        if teacher is None:
            raise LayerError(f"{self.name}: needs a teacher model to tap")
        self.teacher_layers = resolve_layers(teacher, self._given_t, self.layer_kind)
        self.student_layers = resolve_layers(student, self._given_s, self.layer_kind)
        if not self.teacher_layers or not self.student_layers:
            raise LayerError(f"{self.name}: no layers (teacher {self.teacher_layers}, student {self.student_layers})")

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        t_feats = [example.teacher_features[t] for t in self.teacher_layers]
        s_feats = [example.student_features[s] for s in self.student_layers]
        for t_name, f_t in zip(self.teacher_layers, t_feats):
            for s_name, f_s in zip(self.student_layers, s_feats):
                require_dims(self.name, t_name, f_t, s_name, f_s, (4,), "feature maps (N, C, H, W)")
        self.attention = self._attention([f.shape[1] for f in t_feats], [f.shape[1] for f in s_feats])

    def _attention(self, teacher_channels: list[int], student_channels: list[int]) -> LayerAttention:
        return LayerAttention(teacher_channels, student_channels, self.dim)  # teacher layers ask

    def _features(self, out: StepOutputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([out.student_features[s] for s in self.student_layers],
                [out.teacher_features[t].detach() for t in self.teacher_layers])

    def layer_weights(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(alpha, kept): attention weights (N, rows, columns) and which keys were kept (None: all).

        AFD: rows are teacher layers, columns student layers."""
        s_feats, t_feats = self._features(out)
        return F.softmax(self.attention(t_feats, s_feats), dim=2), None

    def weight_axes(self) -> tuple[list[str], list[str]]:
        """(row layer names, column layer names) of `layer_weights`."""
        return self.teacher_layers, self.student_layers

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s_feats, t_feats = self._features(out)
        alpha, _ = self.layer_weights(out)
        distances = value_distances(s_feats, t_feats).transpose(1, 2)  # (N, n_t, n_s)
        return (alpha * distances).sum(dim=(1, 2)).mean()
