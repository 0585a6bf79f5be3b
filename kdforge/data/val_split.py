"""A validation hold-out carved from the training split: where best epochs and teachers are chosen.

Nothing in kdforge is selected on the test split. With ``data.val_split`` set, a seeded,
class-balanced fraction of every class of the training split is held out: the run trains on
the rest, every evaluation also measures the hold-out, and ``best.pt`` (and every recipe's
selection) is chosen on it, while the test split is only reported.

Draw: one ``torch.Generator`` seeded with ``seed`` permutes each class's images in label
order; the first ``round(fraction * n_c)`` (at least 1, and at least one image left to train
on) go to the hold-out. The draw depends only on the labels, the fraction and the seed.
"""

from __future__ import annotations

import torch

from kdforge.data.errors import DataError
from kdforge.data.tensor_dataset import ImageTensorDataset

__all__ = ["val_split_indices", "split_validation"]


def val_split_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), sorted, disjoint, covering every index of `labels`."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_split.fraction must be in (0, 1), got {fraction}")
    labels = labels.detach().to("cpu", torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise DataError("data.val_split needs a labelled training split (found label -1: a label-free set)")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for k in torch.unique(labels).tolist():
        members = (labels == k).nonzero().flatten()
        if members.numel() < 2:
            raise DataError(f"data.val_split: class {k} has {members.numel()} training image(s); a hold-out needs "
                            f"at least 2 per class (one to validate on, one to train on)")
        take = min(max(1, round(fraction * members.numel())), members.numel() - 1)
        perm = members[torch.randperm(members.numel(), generator=gen)]
        val.append(perm[:take])
        train.append(perm[take:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def split_validation(dataset: ImageTensorDataset, fraction: float, seed: int
                     ) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(training part, validation hold-out) of a labelled training split; see the module docstring."""
    if not dataset.has_labels:
        raise DataError(f"data.val_split: dataset {dataset.name!r} is label-free; a hold-out needs labels")
    train_idx, val_idx = val_split_indices(dataset.labels, fraction, seed)
    return dataset.subset(train_idx), dataset.subset(val_idx)
