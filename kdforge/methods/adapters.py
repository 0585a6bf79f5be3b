"""Shared trainable adapters of feature methods: regressors and embedders.

Adapters are submodules of a method, so they train with the student, are saved in
checkpoints and are dropped when the student is exported. Build them in a method's
`setup` from the real feature shapes.

- `ConvRegressor`: a student feature map (N, C_s, H_s, W_s) -> the teacher's shape
  (N, C_t, H_t, W_t), bridging any spatial mismatch (FitNets' regressor).
- `LinearEmbed`: any (N, ...) tensor, flattened -> (N, out_dim), optionally L2-normalised.
- `resample_to`: adaptive average pooling of a map to a (smaller) spatial size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from kdforge.methods.base import StepOutputs


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class ConvRegressor(nn.Module):
    """Map a student feature map to the teacher's channels and spatial size.

    Spatial handling (per the ratio of student size to teacher size):

    - same size: 3x3 conv, stride 1, padding 1;
    - student larger by an integer factor f on both axes: conv with stride f, kernel
      2f-1 (3x3 for f = 2), padding f-1, so every input position is seen;
    - student smaller by an integer factor f on both axes: bilinear upsampling by f,
      then a 3x3 conv (no transposed conv, so no checkerboard artefacts);
    - any other ratio: resample to the teacher's size (adaptive average pooling when
      shrinking on both axes, bilinear interpolation otherwise), then a 3x3 conv.

    Followed by BatchNorm when `bn`, and a ReLU only when `relu` (off by default: hint
    targets are usually pre-activation and can be negative).
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: tuple[int, int],
                 out_size: tuple[int, int], bn: bool = True, relu: bool = False):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"ConvRegressor: channel counts must be positive, got {in_channels} -> {out_channels}")
        self.in_size, self.out_size = _pair(in_size), _pair(out_size)
        (hs, ws), (ht, wt) = self.in_size, self.out_size
        if min(hs, ws, ht, wt) <= 0:
            raise ValueError(f"ConvRegressor: spatial sizes must be positive, got {self.in_size} -> {self.out_size}")
        self.resample: nn.Module = nn.Identity()
        if (hs, ws) == (ht, wt):
            self.mode = "same"
            conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=not bn)
        elif hs % ht == 0 and ws % wt == 0 and hs // ht == ws // wt:
            f = hs // ht
            self.mode = f"stride{f}"
            conv = nn.Conv2d(in_channels, out_channels, 2 * f - 1, stride=f, padding=f - 1, bias=not bn)
        elif ht % hs == 0 and wt % ws == 0 and ht // hs == wt // ws:
            f = ht // hs
            self.mode = f"upsample{f}"
            self.resample = nn.Upsample(scale_factor=f, mode="bilinear", align_corners=False)
            conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=not bn)
        else:
            self.mode = "resample"
            if hs >= ht and ws >= wt:
                self.resample = nn.AdaptiveAvgPool2d((ht, wt))
            else:
                self.resample = nn.Upsample(size=(ht, wt), mode="bilinear", align_corners=False)
            conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=not bn)
        self.conv = conv
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ConvRegressor expects (N, C, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"ConvRegressor built for spatial size {self.in_size}, got {tuple(x.shape[-2:])}")
        return self.relu(self.bn(self.conv(self.resample(x))))

    def extra_repr(self) -> str:
        return f"{self.in_size} -> {self.out_size}, mode={self.mode}"


class LinearEmbed(nn.Module):
    """Flatten (N, ...) to (N, in_dim), then a linear map to out_dim; L2-normalise rows when `normalize`."""

    def __init__(self, in_dim: int, out_dim: int, normalize: bool = False):
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"LinearEmbed: dimensions must be positive, got {in_dim} -> {out_dim}")
        self.linear = nn.Linear(in_dim, out_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = self.linear(x)
        return F.normalize(x, p=2, dim=1) if self.normalize else x

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


def embedding_maps(teacher_layers: list[str], student_layers: list[str], example: "StepOutputs",
                   linear: bool | None = None) -> list[nn.Module]:
    """Per (teacher, student) pair of the dry run, what takes the student's features (flattened) to the
    teacher's width: a `LinearEmbed` when the widths differ (`linear` None), always (True) or never (False:
    `nn.Identity`; the caller flattens where it needs to), on the student's device."""
    maps = []
    for t_name, s_name in zip(teacher_layers, student_layers):
        d_t = example.teacher_features[t_name].flatten(1).shape[1]
        s = example.student_features[s_name]
        d_s = s.flatten(1).shape[1]
        use = (d_s != d_t) if linear is None else linear
        maps.append(LinearEmbed(d_s, d_t).to(s.device) if use else nn.Identity())
    return maps


def resample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of an (N, ..., H, W) map to `size` (identity when already that size).

    Meant for shrinking the larger of two maps to the smaller one's size: for sizes that
    divide evenly this is plain average pooling over the covered cells.
    """
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.dim() == 3:
        return F.adaptive_avg_pool2d(x.unsqueeze(1), size).squeeze(1)
    return F.adaptive_avg_pool2d(x, size)


def smaller_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """The per-axis minimum of two maps' spatial sizes."""
    return (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))


def pair_layers(method: str, student: nn.Module, teacher: nn.Module | None,
                given_teacher: list[str] | None, given_student: list[str] | None, kind: str,
                pick=None) -> tuple[list[str], list[str]]:
    """Resolve the (teacher, student) tap lists of a feature method, paired in order.

    Each side is the user's names (globs expanded) or the model's defaults of `kind`
    (`layers.default_layers`), narrowed by `pick(names) -> names` (e.g. the middle stage)
    for defaults only. When lengths differ: two default lists are paired from the end
    (deepest with deepest); a default list is cut from the front to the length of a given
    one; two given lists of different lengths, or a given list longer than the other
    side's defaults, are a LayerError.
    """
    from kdforge.errors import LayerError
    from kdforge.methods.default_taps import pair_from_end, resolve_layers

    if teacher is None:
        raise LayerError(f"{method}: needs a teacher model to tap")
    t = resolve_layers(teacher, given_teacher, kind)
    s = resolve_layers(student, given_student, kind)
    if pick is not None:
        t = t if given_teacher else list(pick(t))
        s = s if given_student else list(pick(s))
    if not t or not s:
        raise LayerError(f"{method}: no layers to pair (teacher {t}, student {s})")
    if len(t) != len(s):
        given = [side for side, g in (("teacher", given_teacher), ("student", given_student)) if g]
        long_side = "student" if len(s) > len(t) else "teacher"
        if not given or (len(given) == 1 and given[0] != long_side):
            t, s = pair_from_end(t, s)
        else:
            raise LayerError(
                f"{method}: {len(t)} teacher layer(s) {t} and {len(s)} student layer(s) {s}; "
                f"layers are paired in order, so give teacher_layers and student_layers of the same length"
            )
    return t, s


def require_dims(method: str, t_name: str, t: torch.Tensor, s_name: str, s: torch.Tensor,
                 dims: tuple[int, ...], what: str) -> None:
    """LayerError (naming both layers and shapes) unless both features have a rank in `dims`."""
    from kdforge.methods.default_taps import shape_error

    if t.dim() not in dims or s.dim() not in dims:
        raise shape_error(method, t_name, t, s_name, s, f"{method} needs {what}")


def require_same_channel_maps(method: str, teacher_layers: list[str], student_layers: list[str],
                              example: "StepOutputs", why: str) -> None:
    """LayerError unless every (teacher, student) pair of the dry run is two feature maps with the same channels;
    `why` says what needs them equal (the message names both layers and their channel counts)."""
    from kdforge.errors import LayerError

    for t_name, s_name in zip(teacher_layers, student_layers):
        f_t, f_s = example.teacher_features[t_name], example.student_features[s_name]
        require_dims(method, t_name, f_t, s_name, f_s, (4,), "feature maps (N, C, H, W)")
        if f_t.shape[1] != f_s.shape[1]:
            raise LayerError(f"{method}: teacher layer '{t_name}' has {f_t.shape[1]} channels and student layer "
                             f"'{s_name}' {f_s.shape[1]}: {why} (choose layers with teacher_layers / student_layers)")
