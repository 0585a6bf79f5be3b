"""Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019 (arXiv:1904.01866)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdforge.methods.ab import connectors_for, depth_weights
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method

#: below this probability of a negative response, the margin is -3 sigma (as the official code)
_MIN_NEGATIVE_MASS = 1e-3


def gaussian_margin(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] per channel for x ~ N(mean, std^2): mean - std * phi(mean/std) / Phi(-mean/std).

    Where Phi(-mean/std) <= 1e-3 (almost no negative responses) the margin is -3 * std.
    """
    mean, std = mean.double(), std.double().abs().clamp_min(1e-12)
    z = mean / std
    p_negative = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = mean - std * pdf / p_negative.clamp_min(1e-300)
    return torch.where(p_negative > _MIN_NEGATIVE_MASS, margin, -3 * std).float()


def partial_l2(source: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OH's partial L2 to the margin-ReLU'd teacher, summed over all elements.

    target = max(t, m); (s - target)^2 counts where s > target or target > 0, i.e. a student
    response below the margin is not penalised where the teacher's neuron is off.
    """
    target = torch.maximum(teacher, margin)
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum()


def producing_batchnorms(model: nn.Module, taps: list[str], images: torch.Tensor) -> dict[str, str | None]:
    """For each tap, the name of the BatchNorm module whose output IS the tapped tensor (None if none).

    Runs `model` once on `images` (no grad, eval mode, mode restored) with a hook on every
    BatchNorm; a tap matches a BN when it captured that very tensor (same object or storage).
    """
    from kdforge.features import FeatureTaps

    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(
                lambda _m, _a, output, name=name: outputs.append((name, output))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, taps) as capture:
            _, feats = capture(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    found: dict[str, str | None] = {}
    for tap in taps:
        x = feats[tap]
        hits = [name for name, y in outputs
                if y is x or (y.data_ptr() == x.data_ptr() and y.shape == x.shape and y.stride() == x.stride())]
        found[tap] = hits[-1] if hits else None
    return found


@register_method
class OH(Method):
    """Overhaul of feature distillation (Heo et al., ICCV 2019): margin-ReLU teacher, partial L2, pre-ReLU.

    Teacher and student pre-ReLU maps at the stage ends (paired from the deepest); the student's
    goes through a connector (1x1 conv + BN to the teacher's channels). The teacher's map goes
    through a margin ReLU max(t, m_c), m_c = E[t_c | t_c < 0] of a Gaussian per channel, taken
    from the BN module that produces the tapped tensor (mean beta_c, std |gamma_c|, as the
    paper); where no BN produces it (a residual block's sum), from the mean and std of the
    tapped map over the dry-run batch (`margin_sources` says which). Loss = sum over pairs,
    weighted 1, 1/2, 1/4, ... from the deepest, of the partial L2 (s - max(t, m))^2 counted
    where s > max(t, m) or t > 0, summed over elements and divided by the batch size. The
    official CIFAR code then divides by 1000: that is the usual weight 1e-3 (with ce 1; its
    ImageNet code uses 1e-4). Maps of different sizes (not in the paper): the connector is
    `adapters.ConvRegressor`.
    """

    name = "oh"
    paper = ("Heo, Kim, Yun, Park, Kwak & Choi, A Comprehensive Overhaul of Feature Distillation, "
             "ICCV 2019")
    default_taps = "stage ends (pre-ReLU), paired from the deepest"
    typical_weight = 1e-3
    layer_kind = "stages_preact"

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None):
        super().__init__()
        self._given_t, self._given_s = teacher_layers, student_layers
        self.connectors = nn.ModuleList()
        #: per pair, where its margin came from: a BN module name, or "batch statistics"
        self.margin_sources: list[str] = []
        self._n_margins = 0

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        self.connectors = connectors_for(self, example)

        bns = producing_batchnorms(teacher, list(dict.fromkeys(self.teacher_layers)), example.images) \
            if teacher is not None else {}
        modules = dict(teacher.named_modules()) if teacher is not None else {}
        self.margin_sources = []
        for i, t_name in enumerate(self.teacher_layers):
            t = example.teacher_features[t_name]
            bn_name = bns.get(t_name)
            bn = modules.get(bn_name) if bn_name else None
            if bn is not None and bn.affine:
                mean, std = bn.bias.detach(), bn.weight.detach().abs()
                self.margin_sources.append(bn_name)
            else:
                # No BN produces this tensor (e.g. a residual block's sum `bn(x) + shortcut`):
                # estimate the per-channel Gaussian from the dry-run batch of the tapped map itself.
                # (The official code uses the block's last BN here, ignoring the shortcut.)
                flat = t.detach().float().transpose(0, 1).flatten(1)
                mean, std = flat.mean(dim=1), flat.std(dim=1, unbiased=False)
                self.margin_sources.append("batch statistics")
            margin = gaussian_margin(mean, std).view(1, -1, 1, 1).to(t.device)
            self.register_buffer(f"margin{i}", margin)
        self._n_margins = len(self.teacher_layers)

    def margin(self, i: int) -> torch.Tensor:
        return getattr(self, f"margin{i}")

    def forward(self, out: StepOutputs):
        if len(self.connectors) != len(self.teacher_layers) or self._n_margins != len(self.teacher_layers):
            raise RuntimeError("oh: setup() was not called (no connectors)")
        weights = depth_weights(len(self.connectors))
        total = None
        for i, (w, conn, t_name, s_name) in enumerate(zip(weights, self.connectors, self.teacher_layers,
                                                          self.student_layers)):
            f_t = out.teacher_features[t_name].detach().float()
            f_s = conn(out.student_features[s_name]).float()
            loss = w * partial_l2(f_s, f_t, self.margin(i).float()) / f_s.shape[0]
            total = loss if total is None else total + loss
        return total
