"""Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023 (authors' code: Jin-Ying/Multi-Level-Logit-Distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.data.augment import PixelNormalization
from kdforge.data.randaugment import rand_augment
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.logit_ops import check_temperature, logit_pair
from kdforge.methods.registry import register_method

#: the temperatures of the authors' code (its base T = 4 and 2, 3, 5, 6): "prediction augmentation"
TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)
#: the temperatures at which the authors' code distils the strong view's pair (the others on the weak pair)
STRONG_TEMPERATURES = (3.0, 4.0, 5.0)
#: the strong view's CE relative to MLKD's weight: the authors' CE 0.1 beside their KD weight 0.9
STRONG_CE = 0.1 / 0.9


def gram_gap(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """||p_s p_s^T - p_t p_t^T||_F^2 / rows: the squared gap of the row-by-row Gram matrices."""
    gap = p_student @ p_student.t() - p_teacher @ p_teacher.t()
    return (gap * gap).sum() / p_student.shape[0]


def strong_view_parts(weak: StepOutputs, strong: StepOutputs, temperatures: tuple[float, ...],
                      strong_temperatures: tuple[float, ...], standardized: bool) -> torch.Tensor:
    """The authors' code's second KD term: T^2 KL on the strong view's pair at each of `strong_temperatures`
    plus on the weak pair at each other temperature of `temperatures`, none scaled by confidence."""
    s, t = weak.student_logits.float(), weak.teacher_logits.float().detach()
    s2, t2 = strong.student_logits.float(), strong.teacher_logits.float().detach()
    total = sum(kd_loss(s2, t2, temp, standardized) for temp in strong_temperatures)
    return total + sum(kd_loss(s, t, temp, standardized) for temp in temperatures if temp not in strong_temperatures)


def at_or_below_median(values: torch.Tensor) -> torch.Tensor:
    """The fraction of `values` at most their median (the median as numpy's 50th percentile, interpolated)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


def mlkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures: tuple[float, ...],
               confidence_scale: bool = True, standardized: bool = False) -> dict[str, torch.Tensor]:
    """{'instance', 'batch', 'class'}, each summed over `temperatures`, in float32.

    instance: T^2 KL(p_t || p_s) per image, batch mean. batch: the gap of the B x B image-similarity matrices
    P P^T over B. class: the gap of the C x C class-correlation matrices P^T P over C. With
    `confidence_scale`, instance and batch are times the fraction of images whose teacher confidence (max
    softmax at T = 1) is at most the batch median, class times the fraction of classes whose summed teacher
    probability is at most the median: what the authors' masks come to, as their code multiplies the mask
    with an already averaged term. `standardized` z-scores the logits of the instance term only (as the
    logit-standardisation authors' MLKD)."""
    s, t = student_logits.float(), teacher_logits.float()
    instance = sum(kd_loss(s, t, temp, standardized) for temp in temperatures)
    batch = class_ = 0.0
    for temp in temperatures:
        p_s, p_t = torch.softmax(s / temp, dim=1), torch.softmax(t / temp, dim=1)
        batch = batch + gram_gap(p_s, p_t)
        class_ = class_ + gram_gap(p_s.t(), p_t.t())
    if confidence_scale:
        p_teacher = torch.softmax(t, dim=1)
        images = at_or_below_median(p_teacher.max(dim=1).values)
        instance, batch = instance * images, batch * images
        class_ = class_ * at_or_below_median(p_teacher.sum(dim=0))
    return {"instance": instance, "batch": batch, "class": class_}


@register_method
class MLKD(Method):
    """Multi-level logit distillation: align the softened predictions at several temperatures at the
    instance level (KL), the batch level (image-similarity matrices P P^T) and the class level (class
    correlations P^T P). Returns {'instance', 'batch', 'class'} (logged as `mlkd/instance`, ...).

    The authors' CIFAR-100 setting (public code, mdistiller's KD defaults): CE 0.1 + 0.9 * MLKD, T in
    {2, 3, 4, 5, 6}, at SGD lr 0.025 (half the usual 0.05: the batch and class terms are sums over the batch,
    so their gradient grows with it). `confidence_scale` follows what their masks compute (see `mlkd_parts`);
    `confidence_scale: false` drops it. `standardize: true` z-scores the instance terms' logits. The batch
    level needs at least two images.

    `strong_view: true` is the authors' two-view form (their KD_ours.py and strong-augmentation loaders):
    every batch also runs through both models as a strongly augmented copy (`kdforge.data.randaugment`:
    2 random operations of 14, then Cutout up to half the width), adding `strong_instance` (KL on the strong
    pair at `strong_temperatures` 3, 4, 5, plus the weak pair unscaled at the other temperatures 2 and 6, as
    their code sums it) and `strong_ce` (the strong copy's CE, times `strong_ce` = 0.1 / 0.9 so that with the
    usual weight 0.9 it gets their CE weight 0.1). The batch and class terms stay on the weak view, as theirs.
    Our reading, marked: their strong copy has its own crop and flip, ours is the engine's augmented batch
    (same crop and flip) with RandAugment on top; their two views are separate forwards, ours one forward
    (BatchNorm sees both); the Cutout fill is the dataset's mean (theirs a fixed grey near CIFAR's mean).
    """

    name = "mlkd"
    paper = "Jin, Wang & Lin, Multi-Level Logit Distillation, CVPR 2023"
    default_taps = "logits"
    typical_weight = 0.9

    def __init__(self, temperatures: tuple[float, ...] = TEMPERATURES, confidence_scale: bool = True,
                 standardize: bool = False, strong_view: bool = False,
                 strong_temperatures: tuple[float, ...] = STRONG_TEMPERATURES, strong_ce: float = STRONG_CE):
        super().__init__()
        temperatures = tuple(float(t) for t in temperatures)
        strong_temperatures = tuple(float(t) for t in strong_temperatures)
        if not temperatures:
            raise ValueError("mlkd: temperatures must name at least one temperature")
        for temp in temperatures:
            check_temperature("mlkd", temp)
        if strong_view and not set(strong_temperatures) <= set(temperatures):
            raise ValueError(f"mlkd: strong_temperatures {list(strong_temperatures)} must be among temperatures "
                             f"{list(temperatures)}")
        if strong_ce < 0:
            raise ValueError(f"mlkd: strong_ce is a weight, >= 0, got {strong_ce}")
        self.temperatures, self.confidence_scale, self.standardize = temperatures, confidence_scale, standardize
        self.strong_view, self.strong_temperatures, self.strong_ce = bool(strong_view), strong_temperatures, strong_ce
        self.needs_labels = self.strong_view and strong_ce > 0  # the strong copy's CE

    def extra_views(self, images: torch.Tensor, normalization: PixelNormalization) -> torch.Tensor | None:
        if not self.strong_view:
            return None
        pixels = rand_augment(normalization.to_unit(images), normalization.mean_tensor(images))
        return normalization.from_unit(pixels, images.dtype)

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        s, t = logit_pair("mlkd", out)
        parts = mlkd_parts(s, t.detach(), self.temperatures, self.confidence_scale, self.standardize)
        if self.strong_view:
            if out.view is None:
                raise ValueError("mlkd with strong_view needs the outputs on its strong copy (out.view): run it "
                                 "through the engine, which forwards `extra_views` with the batch")
            parts["strong_instance"] = strong_view_parts(out, out.view, self.temperatures, self.strong_temperatures,
                                                         self.standardize)
            if self.strong_ce > 0:
                if out.labels is None:
                    raise ValueError("mlkd: strong_ce needs labels; set strong_ce: 0 for a label-free run")
                parts["strong_ce"] = self.strong_ce * F.cross_entropy(out.view.student_logits.float(), out.labels)
        return parts

    def extra_repr(self) -> str:
        return (f"temperatures={list(self.temperatures)}, confidence_scale={self.confidence_scale}"
                + (", standardize=True" if self.standardize else "")
                + (f", strong_view=True, strong_temperatures={list(self.strong_temperatures)}, "
                   f"strong_ce={self.strong_ce:.4g}" if self.strong_view else ""))

