"""``adapted``: a zoo model with a 1x1 conv (with bias) after some of its stages.

The student that NetGraft (Shen et al., AAAI 2021, arXiv 2012.04915) produces: its units were
trained with an s2t/t2s adapter pair between them, and each pair folds into one 1x1 conv
(`kdforge.graft.adapter_pairs.fold_adapters`) that runs after the stage (and what lies between it and
the next stage, e.g. a max-pool) and keeps its width. Freshly built, the convs are the identity,
so ``adapted`` computes what its base model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.graft.adapter_pairs import identity_conv1x1
from kdforge.models.zoo_base import ZooModel
from kdforge.models.registry import build_model, register_model


class AdaptedNet(ZooModel):
    """`base` (a zoo model) with ``adapters[<stage>]`` after each stage named in `after`.

    Taps keep the base's names under ``base.``; a stage's tap is its output before the adapter.
    """

    def __init__(self, base: ZooModel, after: Sequence[str], in_channels: int = 3):
        super().__init__()
        if not isinstance(base, ZooModel):
            raise ConfigError(f"adapted: the base must be a zoo model, got {type(base).__name__}")
        after = list(after)
        unknown = [s for s in after if s not in base.stage_names]
        if unknown or len(set(after)) != len(after):
            raise ConfigError(f"adapted: after={after} must name stages of the base each once, from {base.stage_names}")
        self.base = base
        self.adapters = nn.ModuleDict()
        widths = self._stage_widths(base, in_channels)
        for stage in after:
            self.adapters[stage.replace(".", "_")] = identity_conv1x1(widths[stage], widths[stage])
        self.after = after
        self._finish(stage_names=[f"base.{n}" for n in base.stage_names],
                     block_names=[f"base.{n}" for n in base.block_names],
                     classifier_name=f"base.{base.classifier_name}", input_size=base.input_size, init=False)

    @staticmethod
    def _stage_widths(base: ZooModel, in_channels: int) -> dict[str, int]:
        """{stage: output channels}, from one eval-mode pass of a blank image (one block per stage)."""
        from kdforge.graft.blocks import block_outputs

        stages = base.stage_names
        outputs = block_outputs(base, list(range(len(stages))), torch.zeros(1, in_channels, base.input_size,
                                                                            base.input_size))
        return {name: out.shape[1] for name, out in zip(stages, outputs)}

    def adapter(self, stage: str) -> nn.Conv2d:
        """The 1x1 conv after `stage`."""
        return self.adapters[stage.replace(".", "_")]

    def _adapt(self, i: int, x: torch.Tensor) -> torch.Tensor:
        key = self.base.stage_names[i].replace(".", "_")
        return self.adapters[key](x) if key in self.adapters else x

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.stem(x)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.base._stage(i, x)

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._adapt(i, self.base._between(i, x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.head(self._adapt(len(self.base.stage_names) - 1, x))


@register_model("adapted", family="adapted", input_size=32,
                paper="Shen et al., AAAI 2021 (NetGraft's student with folded adapters)")
def adapted(num_classes: int = 100, in_channels: int = 3, base: str = "vgg16_nobn_thin",
            after: Sequence[str] = ("layer4", "layer5"), base_options: dict | None = None) -> AdaptedNet:
    """A zoo model `base` with an identity-initialised 1x1 conv after each stage in `after`."""
    net = build_model(base, num_classes=num_classes, in_channels=in_channels, **(base_options or {}))
    return AdaptedNet(net, after, in_channels)
