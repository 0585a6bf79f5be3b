"""VGG-16 without batch norm in the convs, the teacher / student pair of NetGraft (Shen et al.,
"Progressive Network Grafting for Few-Shot Knowledge Distillation", AAAI 2021, arXiv 2012.04915).

Five stages ``layer1``..``layer5`` of conv3x3(bias)-ReLU units; each stage ends with its own
2x2/2 max-pool (child ``pool`` of the stage), so at 32x32 the stages output 16/8/4/2/1 pixels
and grafting can swap whole stages. Head as in the paper's code: global average pooling (an
identity at 32x32), flatten, then

* ``vgg16_nobn`` (teacher): widths (64,64) (128,128) (256,)*3 (512,)*3 (512,)*3;
  ``fc_hidden`` Linear(512, 512) -> ``fc_bn`` BatchNorm1d(512) -> ``fc`` (no ReLU, no dropout);
* ``vgg16_nobn_thin`` (student): the teacher's layer1..layer3 (same names and shapes), 256
  channels in every conv of layer4 and layer5; ``fc_hidden`` Linear(256, 512) -> ``fc``.

``width`` scales every conv width and the 512 hidden width (rounded, at least 1).
Init as the paper's code: convs Kaiming-normal (fan_out, ReLU), zero bias; Linear N(0, 0.01),
zero bias; BN weight 1, bias 0. Inputs must be at least 32x32 (five 2x2 pools).

Parameter counts at 100 classes (conv3x3 with bias: 9*in*out + out):
  layer1 1,792 + 36,928 = 38,720; layer2 73,856 + 147,584 = 221,440;
  layer3 295,168 + 2 * 590,080 = 1,475,328 (layers 1-3 together 1,735,488, shared by both);
  vgg16_nobn: layer4 1,180,160 + 2 * 2,359,808 = 5,899,776; layer5 3 * 2,359,808 = 7,079,424;
    head fc_hidden 262,656 + fc_bn 1,024 + fc 51,300 = 314,980; total 15,029,668;
  vgg16_nobn_thin: layer4 = layer5 = 3 * 590,080 = 1,770,240;
    head fc_hidden 131,584 + fc 51,300 = 182,884; total 5,458,852.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kdforge.models.zoo_base import ZooModel, conv3x3
from kdforge.models.registry import register_model

_PAPER = "Shen et al. 2021 (NetGraft, AAAI; arXiv 2012.04915)"
MIN_INPUT = 32  # five 2x2 max-pools

TEACHER: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
STUDENT: tuple[tuple[int, ...], ...] = TEACHER[:3] + ((256, 256, 256), (256, 256, 256))


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class ConvReLU(nn.Module):
    """conv3x3 (with bias) -> ReLU; the ReLU is ``out_relu`` so the pre-activation can be tapped."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch, bias=True)
        self.out_relu = nn.ReLU()

    def forward(self, x):
        return self.out_relu(self.conv(x))


class VGGNoBN(ZooModel):
    """Stages ``layer1``..``layer5``: `ConvReLU` units ``0``, ``1``, ... then ``pool``; FC head
    ``fc_hidden`` (-> ``fc_bn`` when `hidden_bn`) -> ``fc``."""

    def __init__(self, cfg: tuple[tuple[int, ...], ...], *, hidden_bn: bool, name: str,
                 num_classes: int = 100, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"{name}: width must be positive, got {width!r}")
        self.model_name = name
        in_ch, layer_names, blocks = in_channels, [], []
        for i, widths in enumerate(cfg, start=1):
            units: OrderedDict[str, nn.Module] = OrderedDict()
            for j, c in enumerate(widths):
                units[str(j)] = ConvReLU(in_ch, _scale(c, width))
                in_ch = _scale(c, width)
                blocks.append(f"layer{i}.{j}")
            units["pool"] = nn.MaxPool2d(2, 2)
            layer_names.append(f"layer{i}")
            self.add_module(layer_names[-1], nn.Sequential(units))
        hidden = _scale(512, width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_hidden = nn.Linear(in_ch, hidden)
        self.fc_bn = nn.BatchNorm1d(hidden) if hidden_bn else None
        self.fc = nn.Linear(hidden, num_classes)
        self._finish(stage_names=layer_names, block_names=blocks, classifier_name="fc", input_size=32)
        for m in self.modules():  # the paper's init of the FC head (`_finish` did the convs)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """No stem: ``layer1`` takes the image."""
        return x

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage `i` (its convs keep the size, its pool halves it); a clear error below 2x2."""
        if x.dim() < 2 or min(x.shape[-2:]) < 2:
            raise ValueError(f"{self.model_name}: input too small, {self.stage_names[i]} got a "
                             f"{'x'.join(map(str, x.shape[-2:]))} map for its 2x2 max-pool; "
                             f"inputs must be at least {MIN_INPUT}x{MIN_INPUT}")
        return super()._stage(i, x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool -> flatten -> fc_hidden (-> fc_bn) -> fc (no ReLU, no dropout)."""
        x = self.fc_hidden(torch.flatten(self.avgpool(x), 1))
        if self.fc_bn is not None:
            x = self.fc_bn(x)
        return self.fc(x)


@register_model("vgg16_nobn", family="vgg_nobn", input_size=32, paper=_PAPER)
def vgg16_nobn(num_classes: int = 100, in_channels: int = 3, width: float = 1.0) -> VGGNoBN:
    """NetGraft's teacher: VGG-16 without BN in the convs; head Linear -> BN1d -> Linear."""
    return VGGNoBN(TEACHER, hidden_bn=True, name="vgg16_nobn", num_classes=num_classes,
                   in_channels=in_channels, width=width)


@register_model("vgg16_nobn_thin", family="vgg_nobn", input_size=32, paper=_PAPER)
def vgg16_nobn_thin(num_classes: int = 100, in_channels: int = 3, width: float = 1.0) -> VGGNoBN:
    """NetGraft's student: the teacher's layer1..3, 256-channel layer4/5; head Linear -> Linear."""
    return VGGNoBN(STUDENT, hidden_bn=False, name="vgg16_nobn_thin", num_classes=num_classes,
                   in_channels=in_channels, width=width)
