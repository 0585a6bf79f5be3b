"""ShuffleNet (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018), in the CIFAR variant of CRD (Tian et al. 2020).

Groups g=3, stages of 240/480/960 channels with 4/8/4 units; a 1x1 stem of 24 channels
and no max-pool, so a 32x32 input runs at 16/8/4. As in CRD, a ReLU also follows the
depthwise conv, and the first 1x1 conv of the network's first unit is not grouped.
Stride-2 units concatenate the 3x3/2 average-pooled input; the others add it.

Parameter count at 100 classes: 949,258.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3, sequential_block_names
from kdforge.models.registry import register_model


class ShuffleUnit(nn.Module):
    """gconv1x1-BN-ReLU, channel shuffle, dwconv3x3(stride)-BN-ReLU, gconv1x1-BN, merge, `out_relu`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first_conv: bool = True):
        super().__init__()
        self.stride = stride
        branch_ch = out_ch - in_ch if stride == 2 else out_ch  # stride 2 concatenates the input
        mid = branch_ch // 4
        first_groups = groups if group_first_conv else 1
        self.conv1 = conv1x1(in_ch, mid, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = nn.ChannelShuffle(first_groups) if first_groups > 1 else nn.Identity()
        self.conv2 = conv3x3(mid, mid, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(mid, branch_ch, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch_ch)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.out_relu = nn.ReLU()

    def forward(self, x):
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = torch.cat([out, self.shortcut(x)], dim=1)
        else:
            out = out + x
        return self.out_relu(out)


class ShuffleNetV1(ZooModel):
    """Stem ``conv1`` (1x1, 24 channels), stages ``layer1``..``layer3``, ``fc``."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, groups: int = 3,
                 widths: tuple[int, ...] = (240, 480, 960), depths: tuple[int, ...] = (4, 8, 4)):
        super().__init__()
        self.conv1 = conv1x1(in_channels, 24)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        in_ch = 24
        layer_names = []
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            units = []
            for j in range(depth):
                units.append(ShuffleUnit(in_ch, width, 2 if j == 0 else 1, groups,
                                         group_first_conv=not (i == 1 and j == 0)))
                in_ch = width
            layer_names.append(f"layer{i}")
            self.add_module(layer_names[-1], nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._finish(stage_names=layer_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=32)


@register_model("shufflenetv1", family="shufflenetv1", input_size=32,
                paper="Zhang et al. 2018 (CIFAR variant of CRD, Tian et al. 2020)")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """CRD's ShuffleNetV1 for CIFAR (g=3)."""
    return ShuffleNetV1(num_classes, in_channels)
