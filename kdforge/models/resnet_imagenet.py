"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

torchvision-shaped: 7x7/2 stem, 3x3/2 max-pool, four stages of 64/128/256/512 planes,
stride on the 3x3 conv of bottlenecks ("ResNet v1.5"). Parameters at 1000 classes:
resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032.
"""

from __future__ import annotations

from kdforge.models.registry import register_model
from kdforge.models.resnet import BasicBlock, Bottleneck, ResNet

_PAPER = "He et al. 2016"


def _imagenet_resnet(block, depths, num_classes: int, in_channels: int, zero_init_residual: bool) -> ResNet:
    return ResNet(block, depths, (64, 128, 256, 512), stem_width=64, num_classes=num_classes,
                  in_channels=in_channels, imagenet_stem=True, input_size=224,
                  zero_init_residual=zero_init_residual)


@register_model("resnet18_imagenet", family="resnet_imagenet", input_size=224, paper=_PAPER)
def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]."""
    return _imagenet_resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, zero_init_residual)


@register_model("resnet34_imagenet", family="resnet_imagenet", input_size=224, paper=_PAPER)
def resnet34_imagenet(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return _imagenet_resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)


@register_model("resnet50_imagenet", family="resnet_imagenet", input_size=224, paper=_PAPER)
def resnet50_imagenet(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]."""
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)
