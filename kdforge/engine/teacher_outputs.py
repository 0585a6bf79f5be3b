"""The teacher's outputs of a training step (`Trainer.forward`): from the run's teacher cache (`train.teacher_cache`),
from the study's teacher store (`train.teacher_store`), or from the teacher itself."""

from __future__ import annotations

import torch


def teacher_outputs(trainer, images: torch.Tensor, n: int, indices: torch.Tensor | None):
    """The teacher's (logits, {tap: feature}) for `images`, whose first `n` are the batch's own (dataset
    `indices`) and the rest methods' extra views: looked up in the run's teacher cache or the study's store
    where they hold the batch, else computed (and recorded by a store that is recording this epoch)."""
    cache = trainer.teacher_cache
    store = trainer.teacher_store if indices is not None else None
    if cache is not None and indices is not None:
        t_logits, t_feats = cache.lookup(indices)
    elif store is not None and store.serving:
        t_logits, t_feats = store.lookup(indices), {}
    else:
        with torch.no_grad():
            t_logits, t_feats = trainer.teacher_taps(images)
        if store is not None:  # every run of the study sees the logits as stored
            t_logits = torch.cat([store.record(indices, t_logits[:n]), t_logits[n:]])
        return t_logits, t_feats
    if images.shape[0] > n:  # a lookup holds the batch's own images; the teacher (eval mode) runs on the rest
        with torch.no_grad():
            v_logits, v_feats = trainer.teacher_taps(images[n:])
        t_logits = torch.cat([t_logits, v_logits])
        t_feats = {k: torch.cat([t_feats[k], v_feats[k]]) for k in t_feats}
    return t_logits, t_feats
