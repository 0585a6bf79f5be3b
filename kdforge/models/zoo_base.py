"""Pieces shared by the model zoo: conv helpers, the conv-BN-ReLU unit, weight init
and `ZooModel`, the base class that carries the feature-tap metadata and runs the stages
(`forward_from`: logits from any stage's output, for SFTN branches).

Conventions every zoo model follows (feature taps rely on them):

* no in-place op anywhere, so a tensor captured by a hook is never changed later;
* every activation is its own module, called once per forward;
* every block ends in a module named ``out_relu``, so ``<block>.out_relu:input`` is
  the block's pre-activation output (an ``nn.Identity`` where the block has no final
  activation: linear bottlenecks, pre-activation WRN blocks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1 (a depthwise one when ``groups == in_ch``)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """1x1 (pointwise) convolution without bias."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, groups=groups, bias=False)


def conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """1x1 convolution + BN: the projection shortcut of residual blocks (``downsample``)."""
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class ConvBNReLU(nn.Module):
    """conv3x3 -> BN -> ReLU; the ReLU is ``out_relu`` so the pre-activation can be tapped."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch, stride, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch)
        self.out_relu = nn.ReLU()

    def forward(self, x):
        return self.out_relu(self.bn(self.conv(x)))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias; norm layers weight 1, bias 0.

    Linear layers keep PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ZooModel(nn.Module):
    """Base of every zoo model: `forward(x)` returns logits, and the instance names its taps.

    ``forward(x) = forward_from(-1, stem(x))``; `forward_from` runs the stages (`_stage`),
    what lies between them (`_between`) and the `head`. Families override these pieces.

    Attributes (module names as in ``named_modules()``):
        stage_names: modules whose output ends each resolution stage, in order.
        block_names: every block (residual / inverted residual / shuffle unit / VGG
            conv-BN-ReLU unit) in forward order; each has an ``out_relu`` submodule.
        classifier_name: the final ``nn.Linear``; its input is the pooled embedding.
        input_size: the image side the architecture is designed for (32 or 224).
    """

    stage_names: list[str]
    block_names: list[str]
    classifier_name: str
    input_size: int

    def _finish(self, *, stage_names: Sequence[str], block_names: Sequence[str],
                classifier_name: str, input_size: int, init: bool = True) -> None:
        """Record the tap metadata, check it names real modules, initialise the weights (unless `init` is false)."""
        self.stage_names = list(stage_names)
        self.block_names = list(block_names)
        self.classifier_name = str(classifier_name)
        self.input_size = int(input_size)
        modules = dict(self.named_modules())
        missing = [n for n in [*self.stage_names, *self.block_names, self.classifier_name]
                   if n not in modules]
        missing += [f"{b}.out_relu" for b in self.block_names if f"{b}.out_relu" not in modules]
        if missing or not isinstance(modules[self.classifier_name], nn.Linear):
            raise AssertionError(f"{type(self).__name__}: bad tap metadata {missing or classifier_name}")
        if init:
            init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(-1, self.stem(x))

    def forward_from(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """Logits from the output of stage `stage` (an index into `self.stage_names`): run the
        stages after it and the head. `forward_from(i, f)` equals `forward(images)` when `f` is the
        output of module `stage_names[i]` on `images`. stage = -1 runs every stage (x = the stem's
        output: the input of the first stage's first module, ``layer1`` in every family)."""
        last = len(self.stage_names) - 1
        if isinstance(stage, bool) or not isinstance(stage, int) or not -1 <= stage <= last:
            raise ValueError(f"{type(self).__name__}.forward_from: stage must be an int in [-1, {last}] "
                             f"(-1 = from the stem's output), got {stage!r}")
        for i in range(stage + 1, last + 1):
            if i > 0:
                x = self._between(i - 1, x)
            x = self._stage(i, x)
        return self.head(x)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the first stage; here conv1 -> bn1 -> relu."""
        return self.relu(self.bn1(self.conv1(x)))

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage `i`: here the module ``stage_names[i]``."""
        return self.get_submodule(self.stage_names[i])(x)

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What runs between stage `i` and stage `i + 1` (nothing here)."""
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's output -> logits; here global average pooling and the classifier."""
        return self.get_submodule(self.classifier_name)(torch.flatten(self.avgpool(x), 1))


def sequential_block_names(model: nn.Module, layer_names: Sequence[str]) -> list[str]:
    """``['layer1.0', 'layer1.1', ...]``: the children of each named ``nn.Sequential``."""
    return [f"{name}.{i}" for name in layer_names for i in range(len(getattr(model, name)))]
