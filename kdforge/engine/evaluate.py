"""Top-1, top-5 and cross-entropy of a classifier over a loader, with one device sync."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.engine.precision import Precision


@torch.inference_mode()
def evaluate(model: nn.Module, loader, precision: Precision) -> dict[str, float]:
    was_training = model.training
    model.eval()
    device = precision.device
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for images, labels in loader:
            with precision.autocast():
                logits = model(images)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hits = topk == labels[:, None]
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            count += labels.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {
        "top1": 100.0 * correct1.item() / count,
        "top5": 100.0 * correct5.item() / count,
        "loss": loss_sum.item() / count,
        "n": count,
    }
