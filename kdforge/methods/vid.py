"""Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019 (arXiv:1904.05835)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import require_dims, resample_to, smaller_size
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


class MeanRegressor(nn.Module):
    """mu(F_s): three 1x1 convolutions with ReLUs between them (C_s -> C_mid -> C_mid -> C_t)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """mean over every element of 0.5 * (log var_c + (target - mean)^2 / var_c), var per channel.

    This is -log N(target; mean, var) without the constant 0.5 * log(2 pi).
    """
    var = variance.view(1, -1, *([1] * (target.dim() - 2)))
    return 0.5 * (torch.log(var) + (target - mean).pow(2) / var).mean()


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """A vector feature (N, D) as a 1x1 map (N, D, 1, 1); maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


@register_method
class VID(Method):
    """Variational information distillation (Ahn et al., CVPR 2019): maximise a variational bound on I(t; s).

    For each teacher/student layer pair, q(t | s) is a Gaussian with mean mu(F_s) (a small
    net of three 1x1 convs with ReLUs, widths C_t) and a per-channel variance
    sigma_c^2 = softplus(alpha_c) + eps (alpha learned, sigma^2 starts at `init_variance`).
    Loss = sum over pairs of mean_{batch, c, h, w} [ log sigma_c + (t - mu(s))^2 / (2 sigma_c^2) ],
    i.e. the negative log-likelihood of the teacher feature averaged over its elements
    (the paper's lambda_k = 1 for every pair). Usual weight 1 (with ce 1).
    Default layers: every stage end (post-ReLU), paired from the deepest. Maps of different
    sizes: the larger one is average-pooled (adaptively) to the smaller size before mu.
    """

    name = "vid"
    paper = ("Ahn, Hu, Damianou, Lawrence & Dai, Variational Information Distillation for Knowledge "
             "Transfer, CVPR 2019")
    default_taps = "stage ends, paired from the deepest"
    typical_weight = 1.0
    tunable = {"init_variance": (0.01, 10.0)}
    layer_kind = "stages"
    uses_hints = True

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 init_variance: float = 5.0, eps: float = 1e-5):
        super().__init__()
        if eps < 0:
            raise ValueError("vid: eps must be >= 0")
        if init_variance <= eps:
            raise ValueError("vid: init_variance must be larger than eps")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.init_variance = init_variance
        self.eps = eps
        self.regressors = nn.ModuleList()
        self.raw_variances = nn.ParameterList()

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        regressors, raw = [], []
        alpha0 = math.log(math.expm1(self.init_variance - self.eps))  # softplus(alpha0) + eps = init_variance
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t, s = example.teacher_features[t_name], example.student_features[s_name]
            require_dims(self.name, t_name, t, s_name, s, (2, 4), "feature maps (N, C, H, W) or vectors (N, D)")
            if t.dim() != s.dim():
                from kdforge.methods.default_taps import shape_error
                raise shape_error(self.name, t_name, t, s_name, s,
                                  "one is a feature map and the other a vector; pair maps with maps")
            c_s, c_t = s.shape[1], t.shape[1]
            regressors.append(MeanRegressor(c_s, c_t, c_t).to(s.device))
            raw.append(nn.Parameter(torch.full((c_t,), alpha0, device=s.device)))
        self.regressors = nn.ModuleList(regressors)
        self.raw_variances = nn.ParameterList(raw)

    def variance(self, i: int) -> torch.Tensor:
        """sigma^2 of pair `i`, per teacher channel."""
        return F.softplus(self.raw_variances[i].float()) + self.eps

    def forward(self, out: StepOutputs):
        if len(self.regressors) != len(self.teacher_layers):
            raise RuntimeError("vid: setup() was not called (no regressors)")
        losses = []
        for i, (t_name, s_name) in enumerate(zip(self.teacher_layers, self.student_layers)):
            f_t = _as_map(out.teacher_features[t_name].detach().float())
            f_s = _as_map(out.student_features[s_name])
            size = smaller_size(f_s, f_t)
            f_t, f_s = resample_to(f_t, size), resample_to(f_s, size)
            mean = self.regressors[i](f_s).float()
            losses.append(gaussian_nll(mean, f_t, self.variance(i)))
        return torch.stack(losses).sum()
