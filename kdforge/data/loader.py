"""Batches from an in-memory :class:`ImageTensorDataset`, assembled on the training device."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from .augment import Augment, normalize
from .tensor_dataset import ImageTensorDataset

__all__ = ["EpochOrder", "TensorLoader", "derive_seed"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from ``parts`` (stable across processes and Python versions)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def check_loader_arguments(what: str, data, batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"{what}: batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{what}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(data) == 0:
        raise ValueError(f"{what}: data set {data.name!r} is empty")


class EpochOrder:
    """The epoch order both loaders share: a permutation of ``len(self.data)`` from ``(seed, epoch)``, each rank's
    disjoint, equal-size share of it (padded by wrapping around, like ``DistributedSampler``), cut into
    ``batch_size`` batches; `set_epoch` chooses the epoch and the batch to start from (mid-epoch resume).
    Subclasses set ``data, batch_size, shuffle, drop_last, seed, rank, world_size, epoch, _start_batch``."""

    @property
    def num_samples(self) -> int:
        """Examples this rank sees per epoch (before ``drop_last``)."""
        return math.ceil(len(self.data) / self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``; ``start_batch`` skips the first batches (mid-epoch resume)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"set_epoch: epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.epoch = int(epoch)
        self._start_batch = int(start_batch)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's example indices for ``epoch`` (CPU int64), in batch order."""
        epoch = self.epoch if epoch is None else epoch
        decided = getattr(self.data, "rank_order", None)
        if decided is not None:  # e.g. tar shards: whole shards per rank (`data/shards/`)
            order = decided(self.seed, epoch, self.rank, self.world_size, self.shuffle, self.num_samples)
            if order is not None:
                return order
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed("order", self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            total = self.num_samples * self.world_size
            if total > n:  # wrap around so every rank gets the same number of examples
                reps = math.ceil((total - n) / n)
                order = torch.cat([order, order.repeat(reps)[: total - n]])
            order = order[self.rank : total : self.world_size]
        return order


class TensorLoader(EpochOrder):
    """Iterate ``(images, labels)`` batches of an in-memory data set on ``device``.

    The uint8 images move to ``device`` once, at construction. Each batch is
    gathered by index, augmented in uint8 (``augment``), normalised to
    ``dtype`` with the data set's mean/std, and optionally made channels-last.

    The order and the augmentation of an epoch depend only on
    ``(seed, epoch)`` (and the rank): call :meth:`set_epoch` before each
    epoch; resuming needs no saved RNG state. With ``world_size > 1`` each
    rank gets a disjoint, equal-size share of the epoch's permutation
    (padded by wrapping around, like ``DistributedSampler``); ``batch_size``
    is per rank.
    """

    def __init__(
        self,
        data: ImageTensorDataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        device: torch.device | str,
        augment: Augment | None,
        seed: int,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
    ):
        check_loader_arguments("TensorLoader", data, batch_size, rank, world_size)
        if not dtype.is_floating_point:
            raise ValueError(f"TensorLoader: dtype must be floating point, got {dtype}")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device)
        self.augment = augment if augment is not None and augment.is_random else None
        self.seed = int(seed)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.with_indices = bool(with_indices)  # yield (images, labels, dataset indices)
        self.epoch = 0
        self._start_batch = 0

        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self._mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(data.std, dtype=torch.float32, device=self.device)
        if self.dtype == torch.float64:
            self._mean, self._std = self._mean.double(), self._std.double()

    def _batch_seed(self, epoch: int, batch: int) -> int:
        return derive_seed("augment", self.seed, epoch, self.rank, batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self._start_batch
        self._start_batch = 0  # a resume offset applies to one pass only
        order = self.epoch_indices(epoch).to(self.device)
        gen = None
        if self.augment is not None:
            gen = torch.Generator(device=self.device)
        bs = self.batch_size
        for b in range(start, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            x = self.images.index_select(0, idx)
            if gen is not None:
                # Reseeded per batch: a batch's augmentation depends only on (seed, epoch, rank, batch).
                gen.manual_seed(self._batch_seed(epoch, b))
                x = self.augment(x, gen)
            x = normalize(x, self._mean, self._std, dtype=self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.with_indices:
                yield x, self.labels.index_select(0, idx), idx
            else:
                yield x, self.labels.index_select(0, idx)

    def __repr__(self) -> str:
        return (
            f"TensorLoader({self.data.name!r}, n={len(self.data)}, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
            f"device={self.device}, augment={self.augment}, rank={self.rank}/{self.world_size})"
        )
