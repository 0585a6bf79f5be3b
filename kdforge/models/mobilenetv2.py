"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), in the CIFAR variant of CRD (Tian et al. 2020; "mobile_half").

Differences from the ImageNet network: width multiplier 0.5 on the blocks (the 1x1 head
keeps 1280 channels), expansion 6, ReLU instead of ReLU6, a 1x1 expansion conv even in the
first (t=1) block, and stride 1 in the 24-channel stage, so a 32x32 input runs at
16/16/16/8/4/4/2/2 through stem + 7 stages. Inverted residuals end in a linear (BN)
output, so their ``out_relu`` is an ``nn.Identity``.

Parameter count at 100 classes: 812,836.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3, sequential_block_names
from kdforge.models.registry import register_model

# t (expansion; None = the builder's expand_ratio), c (channels at width 1), n (blocks), s (stride)
SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class InvertedResidual(nn.Module):
    """pw conv-BN-ReLU, dw conv3x3(stride)-BN-ReLU, pw-linear conv-BN, identity when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.conv1 = conv1x1(in_ch, hidden)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(hidden, hidden, stride, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(hidden, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.out_relu = nn.Identity()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.out_relu(out + x if self.use_residual else out)


class MobileNetV2(ZooModel):
    """Stem ``conv1``, stages ``layer1``..``layer7``, 1x1 head ``conv2`` (1280 channels), ``fc``."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5,
                 expand_ratio: int = 6):
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = conv3x3(in_channels, in_ch, stride=2)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        layer_names, stage_names = [], []
        for i, (t, c, n, s) in enumerate(SETTINGS, start=1):
            out_ch = int(c * width_mult)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if j == 0 else 1, t or expand_ratio))
                in_ch = out_ch
            layer_names.append(f"layer{i}")
            self.add_module(layer_names[-1], nn.Sequential(*blocks))
            if i == len(SETTINGS) or SETTINGS[i][3] != 1:  # the next stage changes resolution
                stage_names.append(layer_names[-1])
        head = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv1x1(in_ch, head)
        self.bn2 = nn.BatchNorm2d(head)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        # the layers each stage runs: a stage ends with the last layer at its resolution
        ends = [layer_names.index(name) + 1 for name in stage_names]
        self._stage_layers = [layer_names[a:b] for a, b in zip([0, *ends], ends)]
        self._finish(stage_names=stage_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=32)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage `i`: every ``layerN`` up to ``stage_names[i]`` (e.g. layer1 and layer2 for stage 0)."""
        for name in self._stage_layers[i]:
            x = getattr(self, name)(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 head conv-BN-ReLU, then pooling and ``fc``."""
        return super().head(self.relu2(self.bn2(self.conv2(x))))


@register_model("mobilenetv2", family="mobilenetv2", input_size=32,
                paper="Sandler et al. 2018 (CIFAR variant of CRD, Tian et al. 2020)")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5,
                expand_ratio: int = 6) -> MobileNetV2:
    """CRD's MobileNetV2 for CIFAR (width 0.5, expansion 6)."""
    return MobileNetV2(num_classes, in_channels, width_mult, expand_ratio)
