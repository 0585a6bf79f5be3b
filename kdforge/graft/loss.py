"""The NetGraft grafting loss (Shen et al., AAAI 2021, arXiv 2012.04915)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalized_logit_loss"]


def normalized_logit_loss(
    grafted_logits: torch.Tensor, teacher_logits: torch.Tensor, *, reduction: str = "sum"
) -> torch.Tensor:
    """``sum_i || z_g,i / ||z_g,i|| - z_T,i / ||z_T,i|| ||^2`` over the batch, teacher detached.

    ``z_g`` are the logits of the teacher with student unit(s) grafted in, ``z_T`` those
    of the intact teacher; both ``(N, C)``. The sum over the batch follows the paper and
    the public code (``F.mse_loss(F.normalize(s), F.normalize(t), reduction='sum')``);
    ``reduction="mean"`` divides by ``N`` instead. Norms use ``F.normalize``'s guard
    (``max(||z||, 1e-12)``), so a zero row maps to 0. Computed in at least float32.
    """
    if grafted_logits.dim() != 2 or grafted_logits.shape != teacher_logits.shape:
        raise ValueError(
            "normalized_logit_loss: expected logits of equal shape (N, C), got "
            f"{tuple(grafted_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(f"normalized_logit_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    dtype = torch.promote_types(torch.promote_types(grafted_logits.dtype, teacher_logits.dtype), torch.float32)
    zg = F.normalize(grafted_logits.to(dtype), dim=1)
    zt = F.normalize(teacher_logits.detach().to(dtype), dim=1)
    loss = (zg - zt).pow(2).sum()
    return loss / grafted_logits.shape[0] if reduction == "mean" and grafted_logits.shape[0] else loss
