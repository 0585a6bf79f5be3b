"""Zhao, Lyu, Zhang, Xu & Cheng, "Embedded Knowledge Distillation in Depth-Level Dynamic Neural
Network" (arXiv:2103.00793, 2021).

The paper is public. This implementation is our reading of its abstract and introduction: the
full net teaches its sub-nets online, with a KL term between their class posteriors and a
self-attention distillation term on features of the same resolution. Everything those do not
fix (the weights, T and its T^2 factor, which targets are detached, the attention map) is ours
and marked *interpretation* below and in docs/ddnn.md.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError
from kdforge.methods.at import attention_map
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.registry import register_method


def self_attention(features: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, H*W) attention of a stage output: the channel mean of F^2, L2-normalised ('at', as in
    Zagoruyko & Komodakis 2017) or turned into a spatial softmax ('softmax', as in SAD, Hou et al. 2019)."""
    a = attention_map(features, 2.0).flatten(1)
    return F.normalize(a, dim=1) if kind == "at" else F.softmax(a, dim=1)


@register_method
class EKD(Method):
    """Embedded knowledge distillation: the full net of a depth-dynamic student teaches its sub-nets online.

    The student must be a `ddnn` model. Per step:

        L = full_ce * CE(z_full) + sum_k [ lambda_ce * CE(z_k)
              + lambda_kl * T^2 * KL(softmax(z_full / T) || softmax(z_k / T))
              + lambda_at * sum_s mean_batch || A(F_full,s) - A(F_k,s) ||^2 ]

    The KL and attention terms are the paper's; their form here is an *interpretation*: the
    sub-nets' CE, the weights, the T^2 factor (as in Hinton et al.), the full net's logits and
    stage outputs detached in both terms (they teach, only their own CE trains them), and
    A = `self_attention` of a stage output (same resolution for every path; 'at' by default,
    'softmax' as in SAD), summed over the stages. Sub-nets start from the full net's output of
    their last first-stage block (`DepthDynamicNet.branch_tap`), so the stem and that part of
    the first stage run once per step. Every evaluation reports each sub-net's top-1.
    `subnets` picks the sub-nets to train (default: all of the network's). T defaults to 1: the
    online teacher starts untrained, and with T = 4 the T^2-scaled KL dominated early training
    and cost the full net and every sub-net about 30 points on digits (docs/ddnn.md).
    """

    name = "ekd"
    paper = ("Zhao, Lyu, Zhang, Xu & Cheng, Embedded Knowledge Distillation in Depth-Level Dynamic Neural "
             "Network, arXiv:2103.00793 (2021)")
    needs_teacher = False
    needs_labels = True
    default_taps = "a ddnn student's stage ends and each sub-net's branch block (no teacher)"
    token_models = "it trains a depth-dynamic zoo ResNet (model ddnn)"

    def __init__(self, full_ce: float = 1.0, lambda_ce: float = 1.0, lambda_kl: float = 1.0,
                 lambda_at: float = 1.0, T: float = 1.0, attention: Literal["at", "softmax"] = "at",
                 subnets: list[str] | None = None):
        super().__init__()
        for key, value in (("full_ce", full_ce), ("lambda_ce", lambda_ce), ("lambda_kl", lambda_kl),
                           ("lambda_at", lambda_at)):
            if value < 0:
                raise ValueError(f"ekd: {key} must be >= 0, got {value}")
        if not any((full_ce, lambda_ce, lambda_kl, lambda_at)):
            raise ValueError("ekd: full_ce, lambda_ce, lambda_kl and lambda_at are all 0: there is no loss")
        if T <= 0:
            raise ValueError(f"ekd: temperature T must be positive, got {T}")
        if attention not in ("at", "softmax"):
            raise ValueError(f"ekd: attention must be 'at' or 'softmax', got {attention!r}")
        self.full_ce, self.lambda_ce, self.lambda_kl, self.lambda_at = full_ce, lambda_ce, lambda_kl, lambda_at
        self.T, self.attention = T, attention
        self._given_subnets = subnets
        self.subnets: list[str] = []
        self._stages: list[str] = []
        self._branches: dict[str, str] = {}

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        from kdforge.models.dynamic import DepthDynamicNet

        if not isinstance(student, DepthDynamicNet):
            raise ConfigError(f"losses.ekd trains a depth-dynamic network, but the student is a "
                              f"{type(student).__name__}: set student.model: ddnn (options full, subnets, bn)")
        held = [n for n in student.names if n != student.full_name]
        given = self._given_subnets if self._given_subnets is not None else held
        unknown = [n for n in given if n not in held]
        if unknown or not given:
            raise ConfigError(f"losses.ekd.subnets: {unknown or 'none given'}; the student holds {', '.join(held)}")
        self.subnets = [n for n in held if n in given]  # deepest first
        self._stages = list(student.stage_names)
        self._branches = {n: student.branch_tap(n) for n in self.subnets}
        self.student_layers = list(dict.fromkeys([*self._stages, *self._branches.values()]))

    def _subnet(self, out: StepOutputs, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Sub-net `name`'s logits and stage outputs, continued from its branch point in the full net."""
        net = out.student
        first_stage_done = net.depths(name)[0]
        return net.continue_path(name, out.student_features[self._branches[name]], 0, first_stage_done)

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        if self.full_ce:
            parts["full_ce"] = self.full_ce * F.cross_entropy(out.student_logits, out.labels)
        target = out.student_logits.detach()
        maps = [self_attention(out.student_features[s].detach(), self.attention) for s in self._stages] \
            if self.lambda_at else []
        for name in self.subnets:
            logits, stages = self._subnet(out, name)
            if self.lambda_ce:  # like the other parts: a zero weight adds no (all-zero) gradient
                parts[f"{name}/ce"] = self.lambda_ce * F.cross_entropy(logits, out.labels)
            if self.lambda_kl:
                parts[f"{name}/kl"] = self.lambda_kl * kd_loss(logits, target, self.T)
            if self.lambda_at:
                distance = [(self_attention(f, self.attention) - a).pow(2).sum(dim=1).mean()
                            for f, a in zip(stages, maps)]
                parts[f"{name}/at"] = self.lambda_at * torch.stack(distance).sum()
        return parts

    def eval_heads(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        return {name: self._subnet(out, name)[0] for name in self.subnets}


def distillation_ratios(epoch: dict, key: str = "ekd") -> dict[str, float | None]:
    """Per sub-net, (its weighted KL + attention terms) / (its weighted CE) in one epoch record of the log
    (the `train_<key>/<path>/...` means): whether the distillation terms act at all. Near 0, the run is
    joint CE training of the paths, not embedded distillation. None where the sub-net's CE is off or 0."""
    prefix = f"train_{key}/"
    paths = sorted({k[len(prefix):].rsplit("/", 1)[0] for k in epoch if k.startswith(prefix) and k.count("/") == 2})
    ratios: dict[str, float | None] = {}
    for path in paths:
        ce = epoch.get(f"{prefix}{path}/ce")
        distil = epoch.get(f"{prefix}{path}/kl", 0.0) + epoch.get(f"{prefix}{path}/at", 0.0)
        ratios[path] = distil / ce if ce else None
    return ratios
