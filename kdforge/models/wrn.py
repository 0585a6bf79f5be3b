"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k for CIFAR as used by CRD (Tian et al. 2020): 3x3 stem of 16 channels, three
stages of (d - 4) / 6 pre-activation blocks with 16k/32k/64k channels, a final BN-ReLU,
no dropout. A block whose width changes takes its 1x1 shortcut from the pre-activated
input; otherwise the shortcut is the raw input. Blocks end in the residual sum, so their
``out_relu`` is an ``nn.Identity`` (its input is still the block output).

Parameter counts at 100 classes: wrn_16_1 180,916; wrn_16_2 703,284; wrn_40_1 569,780;
wrn_40_2 2,255,156.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3, sequential_block_names
from kdforge.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.shortcut = conv1x1(in_ch, out_ch, stride) if in_ch != out_ch or stride != 1 else None
        self.out_relu = nn.Identity()

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return self.out_relu(out + shortcut)


class WideResNet(ZooModel):
    """WRN-`depth`-`widen_factor` for 32x32 inputs."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WRN has depth 6n+4, not {depth}")
        n = (depth - 4) // 6
        self.conv1 = conv3x3(in_channels, 16)
        in_ch = 16
        layer_names = ["layer1", "layer2", "layer3"]
        for i, name in enumerate(layer_names):
            out_ch = 16 * 2 ** i * widen_factor
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_ch, out_ch, stride=2 if i > 0 and j == 0 else 1))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._finish(stage_names=layer_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=32)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 conv alone (the blocks pre-activate their input)."""
        return self.conv1(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN-ReLU, then pooling and ``fc``."""
        return super().head(self.relu(self.bn1(x)))


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    @register_model(name, family="wrn", input_size=32,
                    paper="Zagoruyko & Komodakis 2016 (CIFAR variant of CRD, Tian et al. 2020)")
    def builder(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"WRN-{depth}-{widen_factor}: {(depth - 4) // 6} blocks per stage, widen factor {widen_factor}."


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _k)
