"""ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), in the CIFAR variant of CRD (Tian et al. 2020).

Size 1x: stages of 116/232/464 channels, each a stride-2 `DownUnit` then 3/7/3
`SplitUnit`s, a 1x1 head of 1024 channels; a 1x1 stem of 24 channels and no max-pool, so
a 32x32 input runs at 16/8/4.

The final ReLUs of both branches are applied once, after the concatenation, as
``out_relu`` (then the channel shuffle). This equals the usual per-branch ReLUs exactly:
the pass-through half of a `SplitUnit` is the output of an earlier unit, already >= 0.
So ``<unit>.out_relu:input`` is CRD's pre-activation feature (before the shuffle).

Parameter count at 100 classes: 1,355,528.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3, sequential_block_names
from kdforge.models.registry import register_model

# net size -> (stage channels, head channels), blocks per stage are (3, 7, 3)
CONFIGS: dict[float, tuple[tuple[int, int, int], int]] = {
    0.5: ((48, 96, 192), 1024),
    1.0: ((116, 232, 464), 1024),
    1.5: ((176, 352, 704), 1024),
    2.0: ((224, 488, 976), 2048),
}


class DownUnit(nn.Module):
    """Stride-2 unit. Left: dw3x3/2-BN, 1x1-BN. Right: 1x1-BN-ReLU, dw3x3/2-BN, 1x1-BN.
    Concatenate, `out_relu`, shuffle."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.conv1 = conv3x3(in_ch, in_ch, stride=2, groups=in_ch)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = conv1x1(in_ch, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(in_ch, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = conv3x3(mid, mid, stride=2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)
        self.out_relu = nn.ReLU()
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        left = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.bn5(self.conv5(right))
        return self.shuffle(self.out_relu(torch.cat([left, right], dim=1)))


class SplitUnit(nn.Module):
    """Stride-1 unit: split channels in halves; the second goes through
    1x1-BN-ReLU, dw3x3-BN, 1x1-BN. Concatenate, `out_relu`, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.conv1 = conv1x1(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(c, c, groups=c)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = conv1x1(c, c)
        self.bn3 = nn.BatchNorm2d(c)
        self.out_relu = nn.ReLU()
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        keep, branch = x[:, : self.split], x[:, self.split:]
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(branch)))))
        branch = self.bn3(self.conv3(branch))
        return self.shuffle(self.out_relu(torch.cat([keep, branch], dim=1)))


class ShuffleNetV2(ZooModel):
    """Stem ``conv1`` (1x1, 24 channels), stages ``layer1``..``layer3``, head ``conv2``, ``fc``."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0):
        super().__init__()
        if float(net_size) not in CONFIGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(CONFIGS)}, not {net_size}")
        widths, head = CONFIGS[float(net_size)]
        self.conv1 = conv1x1(in_channels, 24)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        in_ch = 24
        layer_names = []
        for i, (width, depth) in enumerate(zip(widths, (3, 7, 3)), start=1):
            units = [DownUnit(in_ch, width)] + [SplitUnit(width) for _ in range(depth)]
            in_ch = width
            layer_names.append(f"layer{i}")
            self.add_module(layer_names[-1], nn.Sequential(*units))
        self.conv2 = conv1x1(in_ch, head)
        self.bn2 = nn.BatchNorm2d(head)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        self._finish(stage_names=layer_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=32)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 head conv-BN-ReLU, then pooling and ``fc``."""
        return super().head(self.relu2(self.bn2(self.conv2(x))))


@register_model("shufflenetv2", family="shufflenetv2", input_size=32,
                paper="Ma et al. 2018 (CIFAR variant of CRD, Tian et al. 2020)")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0) -> ShuffleNetV2:
    """CRD's ShuffleNetV2 1x for CIFAR."""
    return ShuffleNetV2(num_classes, in_channels, net_size)
