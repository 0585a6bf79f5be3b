"""A whole image-classification split held as one uint8 tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

__all__ = ["ImageTensorDataset"]


@dataclass
class ImageTensorDataset:
    """All images of one split as a single ``uint8`` tensor ``(N, C, H, W)``.

    ``mean`` and ``std`` are per-channel statistics in ``[0, 1]`` units, used
    by :func:`kdforge.data.normalize`; ``classes[k]`` is the name of label
    ``k``. The constructor validates every field and makes ``images``
    contiguous.
    """

    #: False for label-free views (few-shot recipes, `few_shot.LabelFreeImageTensorDataset`)
    has_labels: ClassVar[bool] = True
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = field(default="dataset")

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"{where}: images must be a torch.Tensor, got {type(self.images).__name__}")
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"{where}: labels must be a torch.Tensor, got {type(self.labels).__name__}")
        if self.images.dtype != torch.uint8:
            raise TypeError(f"{where}: images must have dtype torch.uint8, got {self.images.dtype}")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"{where}: labels must have dtype torch.int64, got {self.labels.dtype}")
        if self.images.dim() != 4:
            raise ValueError(
                f"{where}: images must have shape (N, C, H, W), got {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1:
            raise ValueError(f"{where}: labels must have shape (N,), got {tuple(self.labels.shape)}")
        n, c, h, w = self.images.shape
        if self.labels.shape[0] != n:
            raise ValueError(f"{where}: {n} images but {self.labels.shape[0]} labels")
        if c < 1 or h < 1 or w < 1:
            raise ValueError(f"{where}: images have an empty dimension: {tuple(self.images.shape)}")

        self.classes = [str(x) for x in self.classes]
        if not self.classes:
            raise ValueError(f"{where}: classes is empty")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{where}: class names are not unique: {self.classes}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(
                f"{where}: labels must lie in [0, {len(self.classes)}), "
                f"found [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != c:
                raise ValueError(f"{where}: {what} has {len(vals)} entries for {c} channel(s)")
            if not all(math.isfinite(v) for v in vals):
                raise ValueError(f"{where}: {what} must be finite, got {vals}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{where}: std must be positive, got {self.std}")

        if not self.images.is_contiguous():
            self.images = self.images.contiguous()
        if not self.labels.is_contiguous():
            self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One ``(uint8 image (C, H, W), label)`` pair, for inspection."""
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Height of the images (all loaders produce square images)."""
        return int(self.images.shape[2])

    def class_counts(self) -> torch.Tensor:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray | slice) -> "ImageTensorDataset":
        """A new data set holding copies of the selected examples (same classes and statistics)."""
        if isinstance(indices, slice):
            idx = torch.arange(len(self))[indices]
        elif isinstance(indices, torch.Tensor):
            idx = indices
        else:
            idx = torch.as_tensor(np.asarray(indices))
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        if idx.dim() != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            idx = idx.to(torch.int64)
        if idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"indices must be integers, got {idx.dtype}")
        idx = idx.to(device=self.images.device, dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"subset index out of range for dataset of size {len(self)}")
        return ImageTensorDataset(
            images=self.images.index_select(0, idx % max(len(self), 1)),
            labels=self.labels.index_select(0, idx.to(self.labels.device) % max(len(self), 1)),
            classes=list(self.classes),
            mean=self.mean,
            std=self.std,
            name=self.name,
        )

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (
            f"ImageTensorDataset(name={self.name!r}, n={n}, shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes})"
        )
