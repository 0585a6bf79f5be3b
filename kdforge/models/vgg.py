"""VGG with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015), in the CIFAR variant of CRD (Tian et al. 2020).

Five stages of conv3x3(bias)-BN-ReLU units (64, 128, 256, 512, 512 channels), a 2x2
max-pool after each of the first three, a fourth max-pool only for 64x64 inputs (Tiny
ImageNet, as in CRD; told by layer4's 8-high output, so `forward_from` can decide), global
average pooling and a single linear layer (no FC stack). At 32x32 the stages run at
32/16/8/4/4. vgg8 has one unit per stage.

Parameter counts at 100 classes: vgg8 3,965,028; vgg11 9,277,284; vgg13 9,462,180;
vgg16 14,774,436; vgg19 20,086,692.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models.zoo_base import ConvBNReLU, ZooModel, sequential_block_names
from kdforge.models.registry import register_model

CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(ZooModel):
    """Stages ``layer1``..``layer5`` of `ConvBNReLU` units, max-pools ``pool1``..``pool4``."""

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        in_ch = in_channels
        layer_names = []
        for i, widths in enumerate(cfg, start=1):
            units = []
            for width in widths:
                units.append(ConvBNReLU(in_ch, width, bias=True))
                in_ch = width
            layer_names.append(f"layer{i}")
            self.add_module(layer_names[-1], nn.Sequential(*units))
            if i < len(cfg):
                self.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._finish(stage_names=layer_names, block_names=sequential_block_names(self, layer_names),
                     classifier_name="fc", input_size=32)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """No stem: ``layer1`` takes the image."""
        return x

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``pool{i+1}`` after layer1..3; after layer4 only when its output is 8 high, i.e. for
        a 64x64 (Tiny ImageNet) input (CRD tests the image height; 65..71 would pool here too)."""
        if i < 3 or x.shape[-2] == 8:
            return self.get_submodule(f"pool{i + 1}")(x)
        return x


def _register(depth: int) -> None:
    name = f"vgg{depth}"

    @register_model(name, family="vgg", input_size=32,
                    paper="Simonyan & Zisserman 2015 (CIFAR variant of CRD, Tian et al. 2020)")
    def builder(num_classes: int = 100, in_channels: int = 3) -> VGG:
        return VGG(CONFIGS[depth], num_classes, in_channels)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"VGG-{depth} with BN: units per stage {[len(s) for s in CONFIGS[depth]]}."


for _depth in CONFIGS:
    _register(_depth)
