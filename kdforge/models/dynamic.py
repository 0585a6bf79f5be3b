"""Depth-level dynamic networks (DDNN): one weight-shared ResNet that holds plain ResNets of several depths.

Zhao, Lyu, Zhang, Xu & Cheng, "Embedded Knowledge Distillation in Depth-Level Dynamic
Neural Network" (arXiv:2103.00793). A sub-net keeps the stage structure of the full net
and, in each stage, its first n_s blocks (our reading of the paper's abstract and introduction: an interpretation), so a
CIFAR resnet56 [9, 9, 9] holds resnet44 [7, 7, 7], resnet32 and resnet20, and the ImageNet
resnet34 [3, 4, 6, 3] holds resnet18 [2, 2, 2, 2]. Because a sub-net is the plain
architecture's exact layout, `export_subnet` gives a state dict that the plain zoo model
loads, with the same outputs as the sub-net's path through the DDNN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.zoo_base import ZooModel
from kdforge.models.path_norm import ActivePath, PathBatchNorm2d, path_state_key
from kdforge.models.registry import register_model
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


class DepthDynamicNet(ZooModel):
    """A full zoo ResNet and named sub-nets of it (per-stage block counts), sharing all weights.

    `forward(x, subnet=None)` runs the full net (exactly the plain full model) or a sub-net:
    the stem, the first n_s blocks of every stage, the head. `subnets` maps names (plain zoo
    names, or any label for a custom depth list) to per-stage block counts.

    `bn` (the BatchNorm question of the paper, our interpretation):

    * ``shared``: one BN per layer for all paths (the statistics mix the paths);
    * ``switchable``: every layer after the first stage keeps a BN (scale, shift, statistics)
      per path that uses it;
    * ``recalibrate``: shared scale/shift, statistics per path, recomputed over
      `recalibrate_batches` training batches at the end of training (`calibration_forwards`).

    The stem and the first stage see the same input on every path, so their BNs stay shared
    in all modes; a sub-net's first-stage output is therefore the full net's output of block
    n_1 of that stage (`branch_tap`), which `continue_path` takes up without recomputing it.
    Tap metadata (`stage_names`, `block_names`, ...) is the full net's, under ``full.``.
    """

    BN_MODES = ("shared", "switchable", "recalibrate")

    def __init__(self, full: ResNet, subnets: dict[str, Sequence[int]], full_name: str = "full",
                 bn: str = "shared", recalibrate_batches: int | None = None):
        super().__init__()
        self.full = full
        self.full_name = full_name
        self.full_depths = stage_depths(full)
        self.subnets: dict[str, tuple[int, ...]] = {}
        for name, depths in subnets.items():
            self.subnets[_check_name(name, full_name)] = self._check_depths(name, depths)
        if bn not in self.BN_MODES:
            raise ConfigError(f"ddnn bn: '{bn}' is not one of {', '.join(self.BN_MODES)}")
        if recalibrate_batches is not None and (isinstance(recalibrate_batches, bool)
                                                or not isinstance(recalibrate_batches, int)
                                                or recalibrate_batches < 0):
            raise ConfigError(f"ddnn recalibrate_batches: a number of batches >= 0, got {recalibrate_batches!r}")
        self.bn_mode = bn
        default_batches = 50 if bn == "recalibrate" else 0
        #: training batches over which the engine recomputes BN statistics after the last epoch (0: never)
        self.bn_recalibration_batches = default_batches if recalibrate_batches is None else recalibrate_batches
        self._active = ActivePath(full_name)
        if bn != "shared":
            self._split_batchnorms(private_affine=bn == "switchable")
        self.stage_names = [f"full.{s}" for s in full.stage_names]
        self.block_names = [f"full.{b}" for b in full.block_names]
        self.classifier_name = f"full.{full.classifier_name}"
        self.input_size = full.input_size

    def _check_depths(self, name: str, depths: Sequence[int]) -> tuple[int, ...]:
        depths = tuple(int(d) for d in depths)
        if len(depths) != len(self.full_depths):
            raise ConfigError(f"sub-net {name}: {len(depths)} stage depths {list(depths)} for the "
                              f"{len(self.full_depths)} stages of {self.full_name} {list(self.full_depths)}")
        too_deep = [s for s, (d, f) in enumerate(zip(depths, self.full_depths)) if not 1 <= d <= f]
        if too_deep:
            raise ConfigError(f"sub-net {name}: depths {list(depths)} must be between 1 and the full net's "
                              f"{list(self.full_depths)} in every stage (stage {too_deep[0] + 1} is not)")
        return depths

    def _split_batchnorms(self, private_affine: bool) -> None:
        """Replace the BNs after the first stage by `PathBatchNorm2d`s over the paths that use them."""
        for i, stage in enumerate(self.full.stage_names[1:], start=1):
            for j, block in enumerate(self.full.get_submodule(stage)):
                paths = [p for p in self.names if self.depths(p)[i] > j]
                if len(paths) < 2:
                    continue
                for name, module in list(block.named_modules()):
                    if isinstance(module, nn.BatchNorm2d):
                        parent, _, attr = name.rpartition(".")
                        owner = block.get_submodule(parent) if parent else block
                        setattr(owner, attr, PathBatchNorm2d(module, paths, self._active, private_affine))

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

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, subnet: str | None = None) -> torch.Tensor:
        self.depths(subnet)  # an unknown name is a ConfigError
        if subnet is None or subnet == self.full_name:  # not by depths: a sub-net may have BNs of its own
            self._active.name = self.full_name
            return self.full(x)  # through the stage modules, so their hooks fire
        return self.continue_path(subnet, self.full.stem(x), 0, 0)[0]

    def continue_path(self, subnet: str, x: torch.Tensor, stage: int = 0,
                      done: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, outputs of stages `stage`..last) of `subnet`, from `x`: its output after `done`
        blocks of stage `stage` (the stem's output for stage 0, done 0)."""
        depths, full = self.depths(subnet), self.full
        self._active.name = self.full_name if subnet is None else subnet
        try:
            outputs = []
            for i in range(stage, len(depths)):
                if i > stage:
                    x = full._between(i - 1, x)
                blocks = full.get_submodule(full.stage_names[i])
                for j in range(done if i == stage else 0, depths[i]):
                    x = blocks[j](x)
                outputs.append(x)
            return full.head(x), outputs
        finally:  # the full path is the default: a later `net.full(x)` must not run this path's BNs
            self._active.name = self.full_name

    def branch_tap(self, subnet: str) -> str:
        """Module name of the full net's block whose output is `subnet`'s first-stage output."""
        return f"full.{self.full.stage_names[0]}.{self.depths(subnet)[0] - 1}"

    def forward_from(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        self._active.name = self.full_name
        return self.full.forward_from(stage, x)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.full.stem(x)

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.full._between(i, x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.full.head(x)

    def load_plain_full_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a trained plain full model (e.g. a pretrained resnet34): its tensors go to the
        full net, and a split BN's to every path's copy of it. Strict: every tensor must fit."""
        own = self.full.state_dict()
        mapped = {}
        for key in own:
            head, sep, rest = key.partition(".paths.")
            plain = f"{head}.{rest.partition('.')[2]}" if sep else key
            if plain not in state:
                raise KeyError(f"the plain model has no '{plain}' (needed for '{key}')")
            mapped[key] = state[plain]
        extra = set(state) - {path_state_key(k, self.full_name) for k in own}
        if extra:
            raise KeyError(f"the plain model has tensors this network does not: {sorted(extra)[:3]}")
        self.full.load_state_dict(mapped)

    def calibration_forwards(self) -> list:
        """One forward per path, for BN recalibration (`kdforge.engine.bn_recalibration`)."""
        return [functools.partial(self.forward, subnet=name) for name in self.names]

    # ------------------------------------------------------------------ export
    def _plain_keys(self, subnet: str | None) -> dict[str, str]:
        """{key in this net's `full` state dict: key in `subnet`'s plain model} for the tensors it uses."""
        depths = self.depths(subnet)
        path = self.full_name if subnet is None else subnet
        keep = tuple(f"{stage}.{j}." for stage, n in zip(self.full.stage_names, depths) for j in range(n))
        stage_prefixes = tuple(f"{stage}." for stage in self.full.stage_names)
        keys = {}
        for key in self.full.state_dict():
            plain = path_state_key(key, path)
            if plain is not None and (not plain.startswith(stage_prefixes) or plain.startswith(keep)):
                keys[key] = plain
        return keys

    def subnet_state_dict(self, subnet: str | None) -> dict[str, torch.Tensor]:
        """The tensors `subnet` uses, named as in the plain architecture: its exact state dict."""
        state = self.full.state_dict()
        return {plain: state[key].detach().clone() for key, plain in self._plain_keys(subnet).items()}

    def path_parameters(self, subnet: str | None) -> int:
        """Parameters of `subnet`'s plain model."""
        params = dict(self.full.named_parameters())
        return sum(params[key].numel() for key in self._plain_keys(subnet) if key in params)

    def path_complexity(self, input_size: int, in_channels: int) -> dict[str, dict[str, int]]:
        """{path: {params, macs}} for every path, MACs of one `input_size` image."""
        from kdforge.models.complexity import count_macs

        return {name: {"params": self.path_parameters(name),
                       "macs": count_macs(_PathView(self, name), input_size, in_channels)}
                for name in self.names}


class _PathView(nn.Module):
    """`net` run as path `subnet` (so that model-level tools such as `count_macs` see one path)."""

    def __init__(self, net: DepthDynamicNet, subnet: str):
        super().__init__()
        self.net, self.subnet = net, subnet
        self.training = net.training  # count_macs restores this mode: it must be the net's, not a fresh True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.subnet)


def _check_name(name: str, full_name: str) -> str:
    """A sub-net name: a key of the per-path BatchNorm dicts, so no dots and no nn.Module attribute."""
    if not isinstance(name, str) or not name or "." in name:
        raise ConfigError(f"sub-net name {name!r} must be a non-empty name without dots")
    if name == full_name:
        raise ConfigError(f"sub-net name {name!r} is the full net's name")
    if hasattr(nn.ModuleDict(), name):
        raise ConfigError(f"sub-net name {name!r} is taken by torch.nn.Module (like half, train, cuda); choose another")
    return name


def build_ddnn(full: str, subnets: Sequence[str | Sequence[int]] | dict[str, Sequence[int]], *,
               num_classes: int, in_channels: int = 3, bn: str = "shared",
               recalibrate_batches: int | None = None) -> DepthDynamicNet:
    """A DDNN of zoo model `full` holding `subnets`: zoo names (e.g. resnet20, resnet18_imagenet),
    per-stage depth lists (named 'd<depths>'), or a {name: depths} mapping; `bn` as in
    `DepthDynamicNet`. `plain_names` maps each path to the zoo model it exports as (None if none)."""
    from kdforge.models import build_model

    model = build_model(full, num_classes=num_classes, in_channels=in_channels)
    if not isinstance(model, ResNet):
        raise ConfigError(f"{full} is a {type(model).__name__}; depth-dynamic networks are built from ResNets")
    if isinstance(subnets, (str, bytes)) or not isinstance(subnets, (Sequence, dict)) or not subnets:
        raise ConfigError(f"ddnn subnets: a list of zoo names or per-stage depth lists, got {subnets!r}")
    named: dict[str, Sequence[int]] = {}
    plain_names: dict[str, str | None] = {full: full}
    items = subnets.items() if isinstance(subnets, dict) else [(None, s) for s in subnets]
    for label, spec in items:
        if label is None and isinstance(spec, str) and spec in named:
            raise ConfigError(f"ddnn subnets: {spec} is listed twice")
        if isinstance(spec, str):
            plain = build_model(spec, num_classes=num_classes, in_channels=in_channels)
            _check_prefix(model, plain, spec, full)
            named[label or spec] = stage_depths(plain)
            plain_names[label or spec] = spec
        elif isinstance(spec, Sequence) and all(isinstance(d, int) and not isinstance(d, bool) for d in spec):
            label = label or "d" + "-".join(str(d) for d in spec)
            if label in named:
                raise ConfigError(f"ddnn subnets: {label} is listed twice")
            named[label] = spec
            plain_names[label] = None
        else:
            raise ConfigError(f"ddnn sub-net {spec!r}: a zoo name (e.g. resnet20) or a list of blocks per stage")
    net = DepthDynamicNet(model, named, full_name=full, bn=bn, recalibrate_batches=recalibrate_batches)
    net.plain_names = {name: plain_names[name] or _zoo_match(net, name, num_classes, in_channels)
                       for name in net.names}
    return net


def _zoo_match(net: DepthDynamicNet, subnet: str, num_classes: int, in_channels: int) -> str | None:
    """The zoo model of the full net's family whose layout is exactly `subnet`'s, if there is one."""
    from kdforge.models import build_model, model_info, model_names

    family = model_info(net.full_name).family
    wanted = {k: v.shape for k, v in net.subnet_state_dict(subnet).items()}
    for name in model_names():
        if model_info(name).family != family or name == "ddnn":
            continue
        plain = build_model(name, num_classes=num_classes, in_channels=in_channels)
        if stage_depths(plain) == net.depths(subnet) and {k: v.shape for k, v in plain.state_dict().items()} == wanted:
            return name
    return None


_PAPER = ("Zhao, Lyu, Zhang, Xu & Cheng, Embedded Knowledge Distillation in Depth-Level Dynamic "
          "Neural Network, arXiv:2103.00793 (2021)")


@register_model("ddnn", family="depth_dynamic", input_size=32, paper=_PAPER)
def ddnn(num_classes: int = 100, in_channels: int = 3, full: str = "resnet56",
         subnets: Sequence[str | Sequence[int]] = ("resnet44", "resnet32", "resnet20"),
         bn: str = "switchable", recalibrate_batches: int | None = None) -> DepthDynamicNet:
    """Depth-dynamic ResNet: `full` holding `subnets` (zoo names or per-stage depth lists), with
    `bn` shared | switchable | recalibrate (see `DepthDynamicNet`). Train it with `losses: {ekd: 1}`."""
    if not isinstance(full, str):
        raise ConfigError(f"ddnn full: a zoo ResNet name, got {full!r}")
    return build_ddnn(full, subnets, num_classes=num_classes, in_channels=in_channels, bn=bn,
                      recalibrate_batches=recalibrate_batches)
