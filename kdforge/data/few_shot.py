"""Class-balanced n-shot subsets (optionally label-free) for few-shot distillation.

Used by NetGraft (Shen et al., "Progressive Network Grafting for Few-Shot Knowledge
Distillation", AAAI 2021, arXiv 2012.04915): a few images per class are drawn with a
fixed seed and their labels discarded. A labelled hold-out, disjoint from the training
images, can be drawn alongside for model selection (never select on the test set).

Draw: one ``torch.Generator`` seeded with ``seed`` produces, class by class in label
order, a random permutation of that class's images. The first ``shots`` of the
permutation are the training images, the next ``holdout`` the hold-out. The
permutation depends only on ``labels`` and ``seed``, so the training draw does not
change with ``holdout``, and the draw for ``shots=n`` is contained in that for
``shots=m > n``.

Label-free view: :class:`ImageTensorDataset` requires labels in ``[0, C)``, so the
label-free training subset is a :class:`LabelFreeImageTensorDataset`, a subclass whose
labels are all ``-1`` and whose ``has_labels`` is ``False``. It batches through
:class:`~kdforge.data.TensorLoader` unchanged (which yields the ``-1`` labels), while
any loss that indexes by label (e.g. cross-entropy) fails loudly instead of silently
training on labels that should not exist; ``class_counts()`` raises.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from kdforge.data.errors import DataError
from kdforge.data.tensor_dataset import ImageTensorDataset
from kdforge.errors import ConfigError

__all__ = ["few_shot_indices", "few_shot_dataset", "LabelFreeImageTensorDataset", "NO_LABEL"]

NO_LABEL = -1
"""The label stored for every example of a label-free view."""


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"few-shot {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"few-shot {name} must be >= {minimum}, got {value}")
    return value


def few_shot_indices(
    labels: torch.Tensor,
    shots: int,
    seed: int,
    holdout: int = 0,
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded class-balanced draw of ``shots`` training and ``holdout`` hold-out indices per class.

    ``labels`` is a 1-D integer tensor. The classes are ``0 .. num_classes-1`` when
    ``num_classes`` is given (every one must have enough images), otherwise the labels
    present. Returns ``(train_indices, holdout_indices)``, sorted ``int64`` CPU tensors
    of lengths ``shots * K`` and ``holdout * K``, disjoint. See the module docstring for
    why the training draw does not depend on ``holdout``.
    """
    shots = _check_count("shots", shots, 1)
    holdout = _check_count("holdout", holdout, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"few-shot seed must be an integer, got {seed!r}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise DataError("few-shot sampling needs labels as a 1-D tensor")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"few-shot sampling needs integer labels, got {labels.dtype}")
    labels = labels.detach().to("cpu", torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise DataError("few-shot sampling needs labelled data; found negative labels (a label-free set?)")

    if num_classes is None:
        classes = torch.unique(labels).tolist()
    else:
        classes = list(range(num_classes))
    if not classes:
        raise DataError("few-shot sampling: the data set is empty")

    gen = torch.Generator().manual_seed(seed)
    need = shots + holdout
    train, held = [], []
    for k in classes:
        members = (labels == k).nonzero().flatten()
        if members.numel() < need:
            name = f"class {k}" if class_names is None else f"class {k} ({class_names[k]!r})"
            raise DataError(
                f"few-shot sampling: {name} has {members.numel()} image(s), "
                f"fewer than shots + holdout = {shots} + {holdout} = {need}"
            )
        perm = members[torch.randperm(members.numel(), generator=gen)]
        train.append(perm[:shots])
        held.append(perm[shots:need])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


class LabelFreeImageTensorDataset(ImageTensorDataset):
    """An :class:`ImageTensorDataset` without labels: ``labels`` is all :data:`NO_LABEL`.

    Keeps ``classes`` (the label space of the teacher) and the channel statistics.
    ``subset`` returns another label-free set; ``class_counts`` raises.
    """

    has_labels: ClassVar[bool] = False

    def __post_init__(self) -> None:
        labels = self.labels
        if isinstance(labels, torch.Tensor) and labels.numel() and not bool((labels == NO_LABEL).all()):
            raise ValueError(f"dataset {self.name!r}: a label-free data set must have all labels == {NO_LABEL}")
        # Reuse the parent's validation of everything else, with placeholder labels.
        if isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.dtype == torch.int64:
            self.labels = torch.zeros_like(labels)
            super().__post_init__()
            self.labels = torch.full_like(self.labels, NO_LABEL)
        else:
            super().__post_init__()  # raises the parent's type/shape error

    @classmethod
    def from_dataset(cls, data: ImageTensorDataset) -> "LabelFreeImageTensorDataset":
        """A label-free view of ``data``: same images (shared, not copied), labels dropped."""
        return cls(
            images=data.images,
            labels=torch.full_like(data.labels, NO_LABEL),
            classes=list(data.classes),
            mean=data.mean,
            std=data.std,
            name=data.name,
        )

    def class_counts(self) -> torch.Tensor:
        raise DataError(f"dataset {self.name!r} is label-free: it has no class counts")

    def subset(self, indices) -> "LabelFreeImageTensorDataset":
        # The parent builds a plain ImageTensorDataset, which rejects label -1: subset a
        # labelled stand-in sharing the images, then drop its labels again.
        stand_in = ImageTensorDataset(
            images=self.images, labels=torch.zeros_like(self.labels), classes=list(self.classes),
            mean=self.mean, std=self.std, name=self.name,
        )
        return LabelFreeImageTensorDataset.from_dataset(stand_in.subset(indices))

    def __repr__(self) -> str:
        return "LabelFree" + super().__repr__()


def few_shot_dataset(
    dataset: ImageTensorDataset,
    shots: int,
    seed: int,
    holdout: int = 0,
    keep_labels: bool = False,
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """``(train, holdout)`` subsets of ``dataset`` drawn by :func:`few_shot_indices`.

    ``train`` is a :class:`LabelFreeImageTensorDataset` unless ``keep_labels``; the
    hold-out always keeps its labels (it is for model selection) and is empty when
    ``holdout == 0``. Every class of ``dataset.classes`` must have ``shots + holdout``
    images.
    """
    if not dataset.has_labels:
        raise DataError(f"dataset {dataset.name!r} is label-free: class-balanced sampling needs labels")
    train_idx, held_idx = few_shot_indices(
        dataset.labels, shots, seed, holdout,
        num_classes=dataset.num_classes, class_names=dataset.classes,
    )
    train = dataset.subset(train_idx)
    if not keep_labels:
        train = LabelFreeImageTensorDataset.from_dataset(train)
    return train, dataset.subset(held_idx)
