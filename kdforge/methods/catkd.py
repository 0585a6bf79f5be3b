"""Guo, Yan, Wang, Zhang & Wang, "Class Attention Transfer Based Knowledge Distillation", CVPR 2023
(arXiv:2304.12777; public code GzyAftermath/CAT-KD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import LayerError
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def pooled_cams(features: torch.Tensor, classifier_weight: torch.Tensor, resolution: int,
                normalize: bool) -> torch.Tensor:
    """Class activation maps W F (one map per class, no bias) average-pooled to resolution x resolution, in
    float32; pooling first is exact (both are linear). `normalize`: each map L2-normalised over space."""
    pooled = F.adaptive_avg_pool2d(features.float(), resolution)
    cams = torch.einsum("nchw,kc->nkhw", pooled, classifier_weight.float())
    return F.normalize(cams, dim=(2, 3)) if normalize else cams


def global_pool_tap(model: nn.Module) -> tuple[str, nn.Linear]:
    """The map a zoo model's head pools (the input of its `avgpool`) and the linear classifier applied to it."""
    classifier_name = getattr(model, "classifier_name", None)
    if classifier_name is None:
        raise LayerError(f"catkd: {type(model).__name__} does not name its classifier; give teacher_layers / "
                         f"student_layers (the maps its global pooling takes)")
    prefix = classifier_name.rpartition(".")[0]
    pool = f"{prefix}.avgpool" if prefix else "avgpool"
    modules = dict(model.named_modules())
    if not isinstance(modules.get(pool), nn.AdaptiveAvgPool2d) or not isinstance(modules[classifier_name], nn.Linear):
        raise LayerError(f"catkd: {type(model).__name__} has no global pooling module {pool!r} before a linear "
                         f"classifier {classifier_name!r}")
    return f"{pool}:input", modules[classifier_name]


@register_method
class CATKD(Method):
    """Class attention transfer (Guo et al., CVPR 2023): match the models' class activation maps.

    CAM_k = W_k . F (the classifier's weights on the map its global pooling takes, no bias), both average-
    pooled to `resolution` x `resolution`, optionally L2-normalised per map (`normalize`); L = MSE. The
    student's CAMs use its own classifier, so they train it too. **Interpretation:** the authors rebuild
    both networks with a bias-free 1x1-conv classifier before the pooling; here the models keep their
    classifiers (with bias: GAP(W F) + b are the same logits), and CAMs are computed from them.
    Defaults are the authors' code defaults (normalize, 2x2, weight 400 with CE 1); their CIFAR-100 configs
    set per pair e.g. resnet56 -> resnet20 0.7 (no normalize), resnet32x4 -> resnet8x4 15 (no normalize),
    vgg13 -> mobilenetv2 15, resnet32x4 -> shufflenetv1/v2 600 at 4x4 (normalize).
    """

    name = "catkd"
    paper = "Guo, Yan, Wang, Zhang & Wang, Class Attention Transfer Based Knowledge Distillation, CVPR 2023"
    default_taps = "the globally pooled map and the classifier's weights (class activation maps)"
    typical_weight = 400.0
    token_models = "its class activation maps need a global-pooling module before a linear classifier (a CNN's)"

    def __init__(self, resolution: int = 2, normalize: bool = True):
        super().__init__()
        if resolution < 1:
            raise ValueError("catkd: resolution must be a positive number of cells per side")
        self.resolution, self.normalize = resolution, normalize
        self._classifiers: dict[str, nn.Linear] = {}

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is None:
            raise LayerError("catkd: needs a teacher model to tap")
        t_tap, t_fc = global_pool_tap(teacher)
        s_tap, s_fc = global_pool_tap(student)
        if t_fc.out_features != s_fc.out_features:
            raise LayerError(f"catkd: the teacher has {t_fc.out_features} classes, the student {s_fc.out_features}")
        self.teacher_layers, self.student_layers = [t_tap], [s_tap]
        # plain attributes, not submodules: the classifiers belong to the models (and their checkpoints)
        object.__setattr__(self, "_classifiers", {"teacher": t_fc, "student": s_fc})

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        """Check on the dry run that each model's logits are its classifier on the pooled tapped map (so the
        CAMs are the ones its logits pool), e.g. not for a head with a hidden layer."""
        for role, tap, logits, features in (
                ("teacher", self.teacher_layers[0], example.teacher_logits, example.teacher_features),
                ("student", self.student_layers[0], example.student_logits, example.student_features)):
            fmap = features[tap]
            fc = self._classifiers[role]
            if fmap.dim() != 4 or fmap.shape[1] != fc.in_features:
                raise LayerError(f"catkd: the {role}'s map {tap!r} {tuple(fmap.shape[1:])} is not what its classifier "
                                 f"({fc.in_features} inputs) takes after pooling")
            with torch.no_grad():
                again = fc(fmap.float().mean(dim=(2, 3))) if fc.weight.dtype == torch.float32 else None
            if again is not None:
                scale = float(logits.detach().float().abs().max()) + 1e-3
                if not torch.allclose(again, logits.detach().float(), rtol=0.05, atol=0.05 * scale):
                    raise LayerError(f"catkd: the {role}'s logits are not its classifier on the pooled map {tap!r} "
                                     f"(a head with more than one linear layer?); class activation maps need that")

    def forward(self, out: StepOutputs) -> torch.Tensor:
        fc = self._classifiers
        if not fc:
            raise RuntimeError("catkd: bind() was not called")
        with torch.no_grad():
            cams_t = pooled_cams(out.teacher_features[self.teacher_layers[0]], fc["teacher"].weight,
                                 self.resolution, self.normalize)
        cams_s = pooled_cams(out.student_features[self.student_layers[0]], fc["student"].weight,
                             self.resolution, self.normalize)
        return F.mse_loss(cams_s, cams_t)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, normalize={self.normalize}"
