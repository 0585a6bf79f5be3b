"""Top-1, top-5 and cross-entropy of a classifier over a loader, with one device sync."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.engine.precision import Precision


HeadsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """`models` in eval mode inside the block; every submodule gets its own train/eval flag back after it."""
    modes = [(sub, sub.training) for m in models for sub in m.modules()]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for sub, mode in modes:
            sub.training = mode


@torch.inference_mode()
def evaluate(model: nn.Module, loader, precision: Precision, heads: HeadsFn | None = None,
             also_eval: Sequence[nn.Module] = (), reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> dict[str, float]:
    """{top1, top5, loss, n} of `model`; with `heads(images, labels) -> (logits, {name: logits})`
    also `top1/<name>` of every extra head. `also_eval` modules are put in eval mode meanwhile.
    `reduce` sums the counts over processes that each evaluated a share (distributed runs)."""
    device = precision.device
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    head_hits: dict[str, torch.Tensor] = {}
    count = 0
    with eval_mode(model, *also_eval):
        for images, labels in loader:
            with precision.autocast():
                logits, extra = heads(images, labels) if heads is not None else (model(images), {})
            for name, head in extra.items():
                hits = (head.float().argmax(1) == labels).sum()
                head_hits[name] = head_hits[name] + hits if name in head_hits else hits
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hits = topk == labels[:, None]
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            count += labels.shape[0]
    names = sorted(head_hits)
    totals = torch.stack([correct1.double(), correct5.double(), loss_sum, torch.tensor(count, device=device).double(),
                          *(head_hits[name].double() for name in names)])
    if reduce is not None:
        totals = reduce(totals)
    c1, c5, loss, count, *hits = totals.tolist()  # one sync
    count = int(count)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {
        "top1": 100.0 * c1 / count,
        "top5": 100.0 * c5 / count,
        "loss": loss / count,
        "n": count,
        **{f"top1/{name}": 100.0 * h / count for name, h in zip(names, hits)},
    }
