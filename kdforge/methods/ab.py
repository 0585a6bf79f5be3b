"""Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by
Hidden Neurons", AAAI 2019 (arXiv:1811.03233)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import ConvRegressor, require_dims
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def connector(in_channels: int, out_channels: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> nn.Module:
    """Student map -> teacher channels: 1x1 conv + BN (AB's and OH's connector) for maps of the same size.

    The conv starts from N(0, 2 / (k * k * C_out)) as in both papers' code, BN from (1, 0).
    Maps of different sizes (not covered by the papers): `adapters.ConvRegressor` (strided
    3x3 conv or upsampling + 3x3 conv, then BN).
    """
    if tuple(in_size) != tuple(out_size):
        return ConvRegressor(in_channels, out_channels, in_size, out_size, bn=True)
    block = conv1x1_bn(in_channels, out_channels)
    nn.init.kaiming_normal_(block[0].weight, mode="fan_out", nonlinearity="relu")
    return block


def conv1x1_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (no bias, PyTorch's default init) + BatchNorm: a map of any size to `out_channels`."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def connectors_for(method: Method, example: StepOutputs) -> nn.ModuleList:
    """One `connector` per (teacher, student) layer pair of `method`, sized from the dry run."""
    connectors = []
    for t_name, s_name in zip(method.teacher_layers, method.student_layers):
        t, s = example.teacher_features[t_name], example.student_features[s_name]
        require_dims(method.name, t_name, t, s_name, s, (4,), "feature maps (N, C, H, W)")
        connectors.append(connector(s.shape[1], t.shape[1], tuple(s.shape[2:]), tuple(t.shape[2:])).to(s.device))
    return nn.ModuleList(connectors)


def depth_weights(n: int) -> list[float]:
    """Per-pair weights, shallowest first: 2^-(n-1), ..., 1/4, 1/2, 1 (the deepest pair counts most)."""
    return [2.0 ** -(n - 1 - i) for i in range(n)]


def alternative_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """AB's piecewise-differentiable activation transfer loss, summed over all elements.

    Where the teacher neuron is active (t > 0) the student response should be >= margin,
    elsewhere <= -margin: sum of relu(margin - s)^2 [t > 0] + relu(s + margin)^2 [t <= 0].
    """
    active = target > 0
    loss = torch.where(active, F.relu(margin - source).pow(2), F.relu(source + margin).pow(2))
    return loss.sum()


def parameters_feeding(model: nn.Module, taps: list[str], images: torch.Tensor) -> list[str]:
    """Names of `model`'s parameters that the tapped tensors depend on (one forward + autograd).

    The model runs in eval mode (BN statistics untouched) and its mode is restored.
    """
    from kdforge.features import FeatureTaps

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FeatureTaps(model, taps) as capture:
            _, feats = capture.run_eager(images)
            total = sum(f.float().sum() for f in feats.values() if f.requires_grad)
            if not isinstance(total, torch.Tensor):
                return []
            grads = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        model.train(was_training)
    return [n for n, g in zip(names, grads) if g is not None]


@register_method
class AB(Method):
    """Activation-boundary distillation (Heo et al., AAAI 2019): transfer which neurons fire, before training.

    Teacher and student pre-ReLU maps (stage ends, paired from the deepest); a connector
    r (1x1 conv + BN to the teacher's channels) on the student. Loss = sum over pairs,
    weighted 1, 1/2, 1/4, ... from the deepest, of sum_elements [relu(m - r(s))^2 [t > 0]
    + relu(m + r(s))^2 [t <= 0]] / batch size, margin m = 1.

    AB acts as an initialisation: the stage before training (`pretrain_epochs`) trains the
    student's layers up to the deepest hint (every parameter the hinted maps depend on) and
    the connectors on `pretrain_scale` * loss (3/1000, the official code's scaling); then the
    usual setting trains with CE (+ KD) and AB weight 0 (typical_weight 0). A non-zero weight
    also adds the loss during training (3e-3 gives the stage's scale). Stage length: CRD's
    RepDistiller benchmark uses 30 epochs on CIFAR-100 (the official code's sample script
    runs 1); the default 3 suits short runs, set `pretrain_epochs: 30` for the benchmark.
    Maps of different sizes (not in the paper): the connector is `adapters.ConvRegressor`.
    """

    name = "ab"
    paper = ("Heo, Lee, Yun & Choi, Knowledge Transfer via Distillation of Activation Boundaries Formed by "
             "Hidden Neurons, AAAI 2019")
    default_taps = "stage ends (pre-ReLU), paired from the deepest"
    typical_weight = 0.0
    tunable = {"margin": (0.25, 4.0), "pretrain_epochs": (0, 5)}
    layer_kind = "stages_preact"
    pretrain_epochs = 3

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 margin: float = 1.0, pretrain_epochs: int = 3, pretrain_scale: float = 3e-3):
        super().__init__()
        if margin < 0:
            raise ValueError("ab: margin must be >= 0")
        if pretrain_epochs < 0:
            raise ValueError("ab: pretrain_epochs must be >= 0")
        if pretrain_scale <= 0:
            raise ValueError("ab: pretrain_scale must be positive")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.margin = margin
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_scale = pretrain_scale
        self.connectors = nn.ModuleList()
        self._pretrain_names: list[str] | None = None

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        self.connectors = connectors_for(self, example)
        # the student's layers up to the deepest hint: every parameter the tapped maps depend on
        if student is not None:
            self._pretrain_names = parameters_feeding(student, list(dict.fromkeys(self.student_layers)),
                                                      example.images)

    def ab_loss(self, out: StepOutputs) -> torch.Tensor:
        if len(self.connectors) != len(self.teacher_layers):
            raise RuntimeError("ab: setup() was not called (no connectors)")
        weights = depth_weights(len(self.connectors))
        total = None
        for w, conn, t_name, s_name in zip(weights, self.connectors, self.teacher_layers, self.student_layers):
            f_t = out.teacher_features[t_name].detach().float()
            f_s = conn(out.student_features[s_name]).float()
            loss = w * alternative_loss(f_s, f_t, self.margin) / f_s.shape[0]
            total = loss if total is None else total + loss
        return total

    def forward(self, out: StepOutputs):
        return self.ab_loss(out)

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        return self.pretrain_scale * self.ab_loss(out)

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student's parameters that feed the hinted layers, and the connectors."""
        if self._pretrain_names is None:
            raise RuntimeError("ab: setup() must run before the initialisation stage")
        wanted = set(self._pretrain_names)
        return [p for n, p in student.named_parameters() if n in wanted] + list(self.connectors.parameters())
