"""BatchNorm recalibration: recompute running statistics as plain averages over training batches.

Used after training for networks whose paths share weights (a depth-dynamic net with
``bn: recalibrate``), where the running statistics gathered during training do not match
the final weights of each path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from kdforge.models.capabilities import MultiPathNet


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor],
                   forwards: Sequence[Callable[[torch.Tensor], object]] | None = None) -> int:
    """Reset every BatchNorm's running statistics in `model`, then run each of `forwards`
    (default: `model.calibration_forwards()` where the model has it, e.g. one per path of a
    depth-dynamic net, else `model` itself) in train mode on every batch of images, so that each BN holds
    the cumulative average over the batches that reached it. Returns the number of batches.

    A BN reached by several forwards with the same input (layers shared by all paths) gets
    the same statistics as with one forward. Without batches nothing changes. Momenta and train/eval modes are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    if forwards is None:  # a multi-path model: every path, else the paths not run would keep reset statistics
        forwards = model.calibration_forwards() if isinstance(model, MultiPathNet) else [model]
    forwards = list(forwards)
    count = 0
    try:
        model.train()
        for images in batches:
            if count == 0:  # reset only once there is data: no batches leaves the statistics alone
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative moving average: every batch counts equally
            for forward in forwards:
                forward(images)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return count
