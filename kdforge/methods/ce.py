"""Cross-entropy with the labels: plain training, and the hard-label term of KD."""

from __future__ import annotations

import torch.nn.functional as F

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


@register_method
class CrossEntropy(Method):
    """Cross-entropy of the student's logits with the labels (optionally label-smoothed)."""

    name = "ce"
    paper = "standard supervised training"
    needs_teacher = False
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, out: StepOutputs):
        return F.cross_entropy(out.student_logits.float(), out.labels, label_smoothing=self.label_smoothing)
