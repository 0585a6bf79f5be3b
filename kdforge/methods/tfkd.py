"""Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via Label Smoothing Regularization",
CVPR 2020 (arXiv:1909.11723; public code yuanli2333/Teacher-free-Knowledge-Distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.logit_ops import check_temperature
from kdforge.methods.registry import register_method


def virtual_teacher(labels: torch.Tensor, classes: int, correct_prob: float, temperature: float) -> torch.Tensor:
    """Tf-KD's manually designed teacher: softmax(u / T) with u = `correct_prob` at the label and
    (1 - correct_prob) / (K - 1) elsewhere (the softmax of those probabilities, as the authors' code)."""
    u = torch.full((labels.shape[0], classes), (1 - correct_prob) / (classes - 1), device=labels.device)
    u.scatter_(1, labels[:, None], correct_prob)
    return torch.softmax(u / temperature, dim=1)


@register_method
class TfKD(Method):
    """Teacher-free KD, the manually designed teacher (Tf-KD_reg): KL(virtual teacher || student), no teacher model.

    L = mean_b KL(q_b || softmax(z_b)), q = `virtual_teacher` (student logits at T = 1, as the paper).
    **Scale:** the authors' code takes PyTorch's element-mean KL (divided by batch x classes) times a
    `multiplier`; ours is the batch mean, so their (1 - a) CE + a * m * KL is `ce: 1 - a` with
    `tfkd: a * m / K` (ResNet-18 on CIFAR-100: a 0.1, m 100, T 20 -> ce 0.9, tfkd 0.1; MobileNetV2:
    a 0.95, m 1, T 40 -> ce 0.05, tfkd 0.0095). The other form, Tf-KD_self (a teacher of the
    student's own architecture, trained first), is ordinary KD from that run: `kdforge compare
    --teacher STUDENT_MODEL` does it (configs/cifar100/methods/tfkd_self.yaml has the authors' weights).
    """

    name = "tfkd"
    paper = "Yuan, Tay, Li, Wang & Feng, Revisiting Knowledge Distillation via Label Smoothing Regularization, CVPR 2020"
    needs_teacher = False
    needs_labels = True
    default_taps = "logits (a virtual teacher from the labels; no teacher model)"
    typical_weight = 0.1

    def __init__(self, T: float = 20.0, correct_prob: float = 0.99):
        super().__init__()
        check_temperature("tfkd", T)
        if not 0 < correct_prob < 1:
            raise ValueError(f"tfkd: correct_prob must be in (0, 1), got {correct_prob}")
        self.T, self.correct_prob = T, correct_prob

    def forward(self, out: StepOutputs) -> torch.Tensor:
        if out.labels is None:
            raise ValueError("tfkd needs the labels of the batch (its virtual teacher is built from them)")
        z = out.student_logits.float()
        if z.dim() != 2 or z.shape[1] < 2:
            raise ValueError(f"tfkd: needs logits (N, K) with K >= 2 classes, got {tuple(z.shape)}")
        q = virtual_teacher(out.labels, z.shape[1], self.correct_prob, self.T)
        return F.kl_div(F.log_softmax(z, dim=1), q, reduction="batchmean")

    def extra_repr(self) -> str:
        return f"T={self.T}, correct_prob={self.correct_prob}"
