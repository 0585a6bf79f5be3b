"""Depth-level dynamic networks (DDNN): one weight-shared ResNet that holds plain ResNets of several depths.

Zhao, Lyu, Zhang, Xu & Cheng, "Embedded Knowledge Distillation in Depth-Level Dynamic
Neural Network" (arXiv:2103.00793). A sub-net keeps the stage structure of the full net
and, in each stage, its first n_s blocks (our reading: only the abstract is public), so a
CIFAR resnet56 [9, 9, 9] holds resnet44 [7, 7, 7], resnet32 and resnet20, and the ImageNet
resnet34 [3, 4, 6, 3] holds resnet18 [2, 2, 2, 2]. Because a sub-net is the plain
architecture's exact layout, `export_subnet` gives a state dict that the plain zoo model
loads, with the same outputs as the sub-net's path through the DDNN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.resnet import ResNet


def stage_depths(model: nn.Module) -> tuple[int, ...]:
    """Blocks per stage of a zoo ResNet."""
    return tuple(len(model.get_submodule(stage)) for stage in model.stage_names)


def _check_prefix(full: nn.Module, sub: nn.Module, name: str, full_name: str) -> None:
    """`sub` must be `full` with blocks dropped: same classes, and every tensor of `sub` in `full` with its shape."""
    if type(sub) is not type(full) or not isinstance(full, ResNet):
        raise ConfigError(f"sub-net {name}: a {type(sub).__name__} cannot be a sub-net of {full_name} "
                          f"({type(full).__name__}); depth-dynamic networks are ResNets of one family")
    blocks = {type(m) for s in full.stage_names for m in full.get_submodule(s)}
    sub_blocks = {type(m) for s in sub.stage_names for m in sub.get_submodule(s)}
    if sub_blocks != blocks:
        raise ConfigError(f"sub-net {name} is made of {', '.join(sorted(b.__name__ for b in sub_blocks))} blocks but "
                          f"{full_name} of {', '.join(sorted(b.__name__ for b in blocks))}: a sub-net must use the "
                          f"full net's block type")
    full_state = full.state_dict()
    for key, value in sub.state_dict().items():
        if key not in full_state:
            raise ConfigError(f"sub-net {name} has '{key}', which {full_name} does not have: it has more blocks in "
                              f"a stage ({stage_depths(sub)} vs {stage_depths(full)}) or another layout")
        if full_state[key].shape != value.shape:
            raise ConfigError(f"sub-net {name}: '{key}' is {tuple(value.shape)} but {tuple(full_state[key].shape)} "
                              f"in {full_name}: the widths differ, so it is not a sub-net")


class DepthDynamicNet(nn.Module):
    """A full zoo ResNet and named sub-nets of it (per-stage block counts), sharing all weights.

    `forward(x, subnet=None)` runs the full net or the named sub-net: the stem, the first
    n_s blocks of every stage, the head. `subnets` maps names (plain zoo names, or any label
    for a custom depth list) to per-stage block counts.
    """

    def __init__(self, full: ResNet, subnets: dict[str, Sequence[int]], full_name: str = "full"):
        super().__init__()
        self.full = full
        self.full_name = full_name
        self.full_depths = stage_depths(full)
        self.subnets: dict[str, tuple[int, ...]] = {}
        for name, depths in subnets.items():
            depths = tuple(int(d) for d in depths)
            if len(depths) != len(self.full_depths):
                raise ConfigError(f"sub-net {name}: {len(depths)} stage depths {list(depths)} for the "
                                  f"{len(self.full_depths)} stages of {full_name} {list(self.full_depths)}")
            too_deep = [s for s, (d, f) in enumerate(zip(depths, self.full_depths)) if not 1 <= d <= f]
            if too_deep:
                raise ConfigError(f"sub-net {name}: depths {list(depths)} must be between 1 and the full net's "
                                  f"{list(self.full_depths)} in every stage (stage {too_deep[0] + 1} is not)")
            self.subnets[name] = depths

    @property
    def names(self) -> list[str]:
        """The full net's name, then the sub-nets', deepest first."""
        return [self.full_name, *sorted(self.subnets, key=lambda n: -sum(self.subnets[n]))]

    def depths(self, subnet: str | None) -> tuple[int, ...]:
        if subnet is None or subnet == self.full_name:
            return self.full_depths
        if subnet not in self.subnets:
            raise ConfigError(f"no sub-net '{subnet}'; this network holds {', '.join(self.names)}")
        return self.subnets[subnet]

    def forward(self, x: torch.Tensor, subnet: str | None = None) -> torch.Tensor:
        full, depths = self.full, self.depths(subnet)
        x = full.stem(x)
        for i, (stage, n) in enumerate(zip(full.stage_names, depths)):
            if i > 0:
                x = full._between(i - 1, x)
            blocks = full.get_submodule(stage)
            for j in range(n):
                x = blocks[j](x)
        return full.head(x)

    def subnet_state_dict(self, subnet: str) -> dict[str, torch.Tensor]:
        """The full net's tensors that the sub-net uses: the plain architecture's state dict."""
        depths = self.depths(subnet)
        keep = {f"{stage}.{j}." for stage, n in zip(self.full.stage_names, depths) for j in range(n)}
        stage_prefixes = tuple(f"{stage}." for stage in self.full.stage_names)
        return {key: value.detach().clone() for key, value in self.full.state_dict().items()
                if not key.startswith(stage_prefixes) or any(key.startswith(p) for p in keep)}


def build_ddnn(full: str, subnets: Sequence[str | Sequence[int]] | dict[str, Sequence[int]], *,
               num_classes: int, in_channels: int = 3) -> DepthDynamicNet:
    """A DDNN of zoo model `full` holding `subnets`: zoo names (e.g. resnet20, resnet18_imagenet),
    per-stage depth lists (named 'd<depths>'), or a {name: depths} mapping."""
    from kdforge.models import build_model

    model = build_model(full, num_classes=num_classes, in_channels=in_channels)
    if not isinstance(model, ResNet):
        raise ConfigError(f"{full} is a {type(model).__name__}; depth-dynamic networks are built from ResNets")
    named: dict[str, Sequence[int]] = {}
    items = subnets.items() if isinstance(subnets, dict) else [(None, s) for s in subnets]
    for label, spec in items:
        if isinstance(spec, str):
            plain = build_model(spec, num_classes=num_classes, in_channels=in_channels)
            _check_prefix(model, plain, spec, full)
            named[label or spec] = stage_depths(plain)
        else:
            named[label or "d" + "-".join(str(int(d)) for d in spec)] = spec
    return DepthDynamicNet(model, named, full_name=full)
