"""Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv:2203.08679)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.logit_ops import check_temperature, logit_pair, soften
from kdforge.methods.registry import register_method


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float, standardized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * a batch-mean KL(teacher || student); computed in float32.

    TCKD: KL between the binary distributions [p_target, 1 - p_target] of teacher and student.
    NCKD: KL between the class distributions over the non-target classes, renormalised
    (the softmax of the logits with the target class removed). Everything in log space,
    so a confident teacher (p_target ~ 1) gives no log(0). `standardized`: logits z-scored first.
    """
    t = temperature
    s = soften(student_logits, t, standardized)
    z = soften(teacher_logits.detach(), t, standardized)
    n, classes = s.shape
    target = F.one_hot(labels, classes).bool()

    def binary(log_p: torch.Tensor) -> torch.Tensor:
        """log [p_target, 1 - p_target], with log(1 - p_target) as the log-sum-exp of the other classes."""
        log_target = log_p.gather(1, labels[:, None]).squeeze(1)
        log_other = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1)
        return torch.stack([log_target, log_other], dim=1)

    log_bs, log_bt = binary(F.log_softmax(s, dim=1)), binary(F.log_softmax(z, dim=1))
    tckd = F.kl_div(log_bs, log_bt, reduction="batchmean", log_target=True) * (t * t)

    others = ~target  # exactly classes - 1 entries per row
    log_qs = F.log_softmax(s[others].view(n, classes - 1), dim=1)
    log_qt = F.log_softmax(z[others].view(n, classes - 1), dim=1)
    nckd = F.kl_div(log_qs, log_qt, reduction="batchmean", log_target=True) * (t * t)
    return tckd, nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """min(e / warmup, 1) with e the 1-based epoch (`epoch` is the 0-based count of finished epochs)."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


@register_method
class DKD(Method):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD on the logits, ramped up over `warmup` epochs.

    KD splits into a target-class term (TCKD: binary target/non-target distributions)
    and a non-target term (NCKD: distribution among the non-target classes), which
    classical KD couples through the weight (1 - p_target of the teacher); DKD weights
    them freely. Both terms are scaled by T^2 like KD (as in the authors' code).

    Returns the two parts {'tckd': w * alpha * TCKD, 'nckd': w * beta * NCKD} (logged as
    `dkd/tckd`, `dkd/nckd`; their sum is the DKD loss), with the warm-up factor
    w = min(e / warmup, 1), e the 1-based epoch (so the first epoch uses 1 / warmup).
    alpha and beta live here, so the usual run weight is 1 (`losses: {ce: 1.0, dkd: 1.0}`);
    the paper's CIFAR-100 setting is alpha 1, beta 8 (beta 2..8 depending on the pair), T 4.
    `standardize: true` z-scores both models' logits first (logit standardisation, Sun et al., CVPR 2024).
    """

    name = "dkd"
    paper = "Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022"
    needs_labels = True
    default_taps = "logits"
    typical_weight = 1.0
    tunable = {"beta": (1.0, 16.0)}

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0, warmup: int = 20,
                 standardize: bool = False):
        super().__init__()
        check_temperature("dkd", T)
        if alpha < 0 or beta < 0:
            raise ValueError("dkd: alpha and beta must be non-negative")
        if warmup < 0:
            raise ValueError("dkd: warmup (epochs) must be >= 0; 0 turns the warm-up off")
        self.alpha, self.beta, self.T, self.warmup, self.standardize = alpha, beta, T, warmup, standardize

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if out.labels is None:
            raise ValueError("dkd needs the labels of the batch (TCKD/NCKD split at the target class)")
        s, t = logit_pair("dkd", out)
        tckd, nckd = dkd_parts(s, t, out.labels, self.T, self.standardize)
        w = warmup_factor(out.epoch, self.warmup)
        return {"tckd": (w * self.alpha) * tckd, "nckd": (w * self.beta) * nckd}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, T={self.T}, warmup={self.warmup}"
                + (", standardize=True" if self.standardize else ""))
