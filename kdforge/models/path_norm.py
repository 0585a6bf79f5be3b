"""BatchNorm with one set of statistics (and optionally of affine parameters) per network path.

A depth-dynamic network runs several paths (the full net and its sub-nets) through the
same layers; after a skipped block the activations of a shallower path follow another
distribution, so one set of running statistics fits none of them well. `PathBatchNorm2d`
keeps a BatchNorm per path that uses the layer and switches on a shared `ActivePath`:

* ``private_affine=True``: switchable BN (Yu et al., "Slimmable Neural Networks", ICLR 2019),
  every path has its own scale/shift and statistics;
* ``private_affine=False``: one scale/shift, statistics per path (for BN recalibration:
  the statistics of a path are its own, however the weights are shared).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ActivePath:
    """The name of the path being run; one instance is shared by every `PathBatchNorm2d` of a network."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class PathBatchNorm2d(nn.Module):
    """`bn` split into one BatchNorm per path in `paths`; `active.name` picks the one used.

    Starts from `bn`'s parameters and statistics for every path. State-dict keys:
    ``paths.<path>.{weight,bias,running_mean,running_var,num_batches_tracked}``, with
    ``weight`` / ``bias`` directly on this module when the affine parameters are shared.
    """

    def __init__(self, bn: nn.BatchNorm2d, paths: Sequence[str], active: ActivePath, private_affine: bool):
        super().__init__()
        self.active = active
        self.private_affine = private_affine
        self.num_features = bn.num_features
        self.paths = nn.ModuleDict()
        for path in paths:
            per_path = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=private_affine)
            per_path.load_state_dict({k: v for k, v in bn.state_dict().items()
                                      if private_affine or k not in ("weight", "bias")})
            self.paths[path] = per_path
        if private_affine:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
            self.weight = nn.Parameter(bn.weight.detach().clone())
            self.bias = nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.paths[self.active.name]
        if self.private_affine:
            return bn(x)
        # nn.BatchNorm2d's own update rule (momentum None: cumulative average), with the shared affine
        factor = 0.0
        if self.training:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(x, bn.running_mean, bn.running_var, self.weight, self.bias,
                            self.training, factor, bn.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, paths={list(self.paths)}, private_affine={self.private_affine}"


def path_state_key(key: str, path: str) -> str | None:
    """A network state-dict key as `path`'s plain model names it: ``x.paths.<path>.y`` -> ``x.y``;
    None for another path's key; other keys unchanged."""
    head, sep, rest = key.partition(".paths.")
    if not sep:
        return key
    owner, _, attr = rest.partition(".")
    return f"{head}.{attr}" if owner == path else None
