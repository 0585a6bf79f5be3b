"""Pieces the logit methods share: the checked pair of logits, temperature softening with optional logit
standardisation, Pearson correlation, gradient scaling. Not a method (no registration)."""

from __future__ import annotations

import torch

from kdforge.methods.default_taps import shape_error

#: added to the standard deviation before dividing, as in the authors' code (Sun et al., CVPR 2024)
STD_EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row: (z - mean(z)) / (std(z) + 1e-7), std with Bessel's correction, as the
    logit-standardisation code does (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024, arXiv:2403.01427)."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + STD_EPS)


def soften(logits: torch.Tensor, temperature: float, standardized: bool = False) -> torch.Tensor:
    """The logits a softmax at temperature T takes: z / T in float32, z z-scored first if `standardized`."""
    z = logits.float()
    return (standardize(z) if standardized else z) / temperature


def logit_pair(method: str, out) -> tuple[torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits) of a step's outputs, checked: the teacher's are there and both are
    (N, C) with the same C >= 2. The teacher's come as given: a method whose teacher only teaches detaches them."""
    s, t = out.student_logits, out.teacher_logits
    if t is None:
        raise ValueError(f"{method} needs the teacher's logits")
    if s.shape != t.shape or s.dim() != 2 or s.shape[1] < 2:
        raise shape_error(method, "logits", t, "logits", s,
                          f"{method.upper()} needs logits of the same number (>= 2) of classes")
    return s, t


def check_temperature(method: str, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"{method}: temperature T must be positive")


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the rows of `a` and `b` (one value per row): the cosine of the centred rows,
    with `eps` added to the product of norms (as the DIST authors' code, so constant rows give 0)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (negative: reversed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` unchanged, its gradient times `scale` on the way back: a gradient-reversal layer for scale < 0
    (Ganin & Lempitsky, ICML 2015)."""
    return _ReverseGradient.apply(x, scale)
