"""Shen et al., "Progressive Network Grafting for Few-Shot Knowledge Distillation", AAAI 2021 (arXiv 2012.04915)."""

from __future__ import annotations

from typing import Literal

from kdforge.graft.loss import normalized_logit_loss
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


@register_method
class NetGraft(Method):
    """Label-free grafting loss: match the direction of the teacher's logits.

    ``sum_i || z_g/||z_g|| - z_T/||z_T|| ||^2`` between the logits of the trained network (the
    teacher with student units grafted in, model ``grafted``) and the intact teacher's.

    `kdforge netgraft` runs the paper's two stages with it (each unit alone, then ever longer
    chains); on its own it is a direction-only logit match for any student. `reduction`: ``sum``
    over the batch as in the paper, or ``mean``.
    """

    name = "netgraft"
    paper = "Shen et al., Progressive Network Grafting for Few-Shot Knowledge Distillation, AAAI 2021"

    def __init__(self, reduction: Literal["sum", "mean"] = "sum"):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"netgraft: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def forward(self, out: StepOutputs):
        return normalized_logit_loss(out.student_logits, out.teacher_logits, reduction=self.reduction)
