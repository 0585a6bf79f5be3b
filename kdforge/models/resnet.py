"""Residual networks (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

One `ResNet` class serves the CIFAR zoo (3x3 stem, no max-pool) and the ImageNet models
(7x7 stride-2 stem + max-pool); the registered names live in `resnet_cifar.py` and
`resnet_imagenet.py`. Projection shortcuts (1x1 conv + BN, "option B") wherever the shape
changes, stride on the 3x3 conv of bottlenecks (as torchvision and CRD).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3, conv_bn, sequential_block_names


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then `out_relu`."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        out_ch = planes * self.expansion
        self.downsample = conv_bn(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None
        self.out_relu = nn.ReLU()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + shortcut)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, plus the shortcut, then `out_relu`."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = conv_bn(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None
        self.out_relu = nn.ReLU()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + shortcut)


class ResNet(ZooModel):
    """Stem, then one stage ``layer{i}`` per entry of `depths` (first stride 1, then 2).

    Args:
        block: `BasicBlock` or `Bottleneck`.
        depths: blocks per stage.
        widths: `planes` of each stage (output channels are ``planes * block.expansion``).
        stem_width: output channels of the stem convolution.
        imagenet_stem: 7x7/2 conv + 3x3/2 max-pool instead of a 3x3/1 conv.
        zero_init_residual: start the last BN of every block at 0 (each block = identity).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int],
                 widths: Sequence[int], *, stem_width: int, num_classes: int, in_channels: int = 3,
                 imagenet_stem: bool = False, input_size: int = 32, zero_init_residual: bool = False):
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else None
        layer_names = []
        in_ch = stem_width
        for i, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(in_ch, planes, stride=2 if i > 0 and j == 0 else 1))
                in_ch = planes * block.expansion
            layer_names.append(f"layer{i + 1}")
            self.add_module(layer_names[-1], nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._finish(stage_names=layer_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=input_size)
        if zero_init_residual:
            for name in self.block_names:
                nn.init.zeros_(self.get_submodule(name).last_bn().weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> relu, then the max-pool of the ImageNet stem."""
        x = super().stem(x)
        return x if self.maxpool is None else self.maxpool(x)
