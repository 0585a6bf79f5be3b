"""Model size and cost: parameters, and multiply-accumulates (MACs) of conv and linear layers."""

from __future__ import annotations

import math

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def format_macs(macs: float) -> str:
    """'12.5 M', '125 M', '1.81 G', '50.0 M': MACs in the unit people quote them in, 3 significant digits."""
    rounded = float(f"{macs:.3g}")  # round first, so 999,999,999 is '1.00 G', not '1000 M'
    value, unit = (rounded / 1e9, "G") if rounded >= 1e9 else (rounded / 1e6, "M")
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 1
    return f"{value:.{decimals}f} {unit}"


def _conv_macs(module: nn.modules.conv._ConvNd, inputs, output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if module.transposed:  # every input element meets every kernel tap of its group's outputs
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """MACs of one forward of a (1, in_channels, input_size, input_size) input.

    Counts the multiply-accumulates of every convolution (including grouped / depthwise)
    and linear layer, through forward hooks; biases, norms, activations and pooling are
    not counted (the usual convention: ResNet-18 at 224 is about 1.8 G).
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            total += _conv_macs(module, inputs, output)
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    first = next(model.parameters(), None)
    example = torch.zeros(1, in_channels, input_size, input_size,
                          device=first.device if first is not None else None,
                          dtype=first.dtype if first is not None and first.is_floating_point() else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
