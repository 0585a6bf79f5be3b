"""CIFAR ResNets of the knowledge-distillation literature (32x32 inputs).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, in the variants of
CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020; RepDistiller):

* ``resnet{8,14,20,32,44,56,110}``: 3x3 stem of 16 channels, three stages of
  (depth - 2) / 6 BasicBlocks with 16/32/64 channels, 1x1-conv projection shortcuts.
* ``resnet8x4``, ``resnet32x4``: the same with a 32-channel stem and 64/128/256 channels.
* ``resnet50``: the ImageNet ResNet-50 (bottlenecks, 64..2048 channels) with a 3x3/1
  stem and no max-pool, so its four stages run at 32/16/8/4.

Parameter counts at 100 classes: resnet8 83,892; resnet20 278,324; resnet32 472,756;
resnet56 861,620; resnet110 1,736,564; resnet8x4 1,233,540; resnet32x4 7,433,860;
resnet50 23,705,252.
"""

from __future__ import annotations

from kdforge.models.registry import register_model
from kdforge.models.resnet import BasicBlock, Bottleneck, ResNet

_PAPER = "He et al. 2016 (CIFAR variant of CRD, Tian et al. 2020)"


def _cifar_resnet(depth: int, stem_width: int, widths: tuple[int, int, int], num_classes: int,
                  in_channels: int, zero_init_residual: bool) -> ResNet:
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR BasicBlock ResNet has depth 6n+2, not {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), widths, stem_width=stem_width, num_classes=num_classes,
                  in_channels=in_channels, zero_init_residual=zero_init_residual)


def _register_thin(depth: int) -> None:
    @register_model(f"resnet{depth}", family="resnet_cifar", input_size=32, paper=_PAPER)
    def builder(num_classes: int = 100, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
        return _cifar_resnet(depth, 16, (16, 32, 64), num_classes, in_channels, zero_init_residual)

    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} for CIFAR: {(depth - 2) // 6} BasicBlocks per stage, 16/32/64 channels."


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_thin(_depth)


@register_model("resnet8x4", family="resnet_cifar", input_size=32, paper=_PAPER)
def resnet8x4(num_classes: int = 100, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-8 with 4x widths (32-channel stem, 64/128/256), as in CRD."""
    return _cifar_resnet(8, 32, (64, 128, 256), num_classes, in_channels, zero_init_residual)


@register_model("resnet32x4", family="resnet_cifar", input_size=32, paper=_PAPER)
def resnet32x4(num_classes: int = 100, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-32 with 4x widths (32-channel stem, 64/128/256), as in CRD."""
    return _cifar_resnet(32, 32, (64, 128, 256), num_classes, in_channels, zero_init_residual)


@register_model("resnet50", family="resnet_cifar", input_size=32, paper=_PAPER)
def resnet50(num_classes: int = 100, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 (bottlenecks [3, 4, 6, 3]) with a 3x3/1 stem and no max-pool, as in CRD."""
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), stem_width=64,
                  num_classes=num_classes, in_channels=in_channels,
                  zero_init_residual=zero_init_residual)
