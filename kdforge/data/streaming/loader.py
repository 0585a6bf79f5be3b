"""`StreamingLoader`: batches of a `StreamingImageDataset`, decoded in DataLoader workers, on the device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..augment import normalize
from ..errors import DataError
from ..loader import EpochOrder, check_loader_arguments, derive_seed
from .dataset import BadImage, StreamingImageDataset


def _collate(samples):
    """(uint8 images or None, labels, indices, bad files) of one batch; bad files are left out of the rest."""
    good = [(image, label, index) for image, label, index in samples if not isinstance(image, BadImage)]
    bad = [image for image, _, _ in samples if isinstance(image, BadImage)]
    if not good:
        return None, None, None, bad
    images, labels, indices = zip(*good)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), torch.tensor(indices), bad


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one image at a time; its own threads would only compete


class BatchKeys:
    """The batches of one epoch from batch `start` on, each a list of (image index, crop seed): a DataLoader's
    `batch_sampler`."""

    def __init__(self, order: torch.Tensor, batch_size: int, batches: int, start: int, seed: int, epoch: int):
        self.order, self.batch_size, self.batches, self.start = order, batch_size, batches, start
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return max(0, self.batches - self.start)

    def __getitem__(self, k: int) -> list[tuple[int, int]]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        b = self.start + k
        picked = self.order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
        return [(i, derive_seed("augment", self.seed, self.epoch, i)) for i in picked]

    def __iter__(self):
        return (self[k] for k in range(len(self)))


class StreamingLoader(EpochOrder):
    """`TensorLoader`'s interface over files: ``(images, labels[, indices])`` on `device`.

    The epoch order and rank shards are `EpochOrder`'s (as in memory); image `i`'s crop in epoch `e` is drawn
    from ``derive_seed("augment", seed, e, i)`` in whichever worker decodes it, so the batches do not depend
    on `workers`, and ``set_epoch(e, b)`` resumes at batch `b` exactly. uint8 batches are pinned (CUDA) and
    copied ahead, normalised on the device. A file Pillow cannot read raises a one-line `DataError` naming it,
    or with `skip_bad_files` is left out of its batch (which is then smaller) and listed in `bad_files`
    ({path: reason}); a batch of bad files only is an error either way (the epoch must keep its length).
    """

    def __init__(self, data: StreamingImageDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 device: torch.device | str, seed: int, workers: int = 4, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, rank: int = 0, world_size: int = 1,
                 with_indices: bool = False, skip_bad_files: bool = False, prefetch_factor: int = 4):
        check_loader_arguments("StreamingLoader", data, batch_size, rank, world_size)
        self.data = data
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.device, self.seed, self.workers = torch.device(device), int(seed), int(workers)
        self.channels_last, self.dtype = bool(channels_last), dtype
        self.rank, self.world_size = int(rank), int(world_size)
        self.with_indices, self.skip_bad_files = bool(with_indices), bool(skip_bad_files)
        self.prefetch_factor = int(prefetch_factor)
        self.epoch, self._start_batch = 0, 0
        self.bad_files: dict[str, str] = {}
        self._mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(data.std, dtype=torch.float32, device=self.device)

    def batch_keys(self, epoch: int, start: int = 0) -> "BatchKeys":
        """Every batch of `epoch` from batch `start` on, as the (index, crop seed) pairs the workers decode (made
        batch by batch, as the DataLoader asks: an ImageNet epoch's 1.28 M pairs are never all held)."""
        return BatchKeys(self.epoch_indices(epoch), self.batch_size, len(self), start, self.seed, epoch)

    def _batches(self, keys):
        from torch.utils.data import DataLoader

        if len(keys) == 0:
            return iter(())
        workers = min(self.workers, len(keys))
        extra = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": _one_thread} if workers else {}
        return iter(DataLoader(self.data, batch_sampler=keys, num_workers=workers, collate_fn=_collate,
                               pin_memory=self.device.type == "cuda", **extra))

    def _to_device(self, batch):
        """(images, labels, indices) on their way to the device, and the batch's unreadable files."""
        images, labels, indices, bad = batch
        if images is None:
            return None, bad
        pinned = self.device.type == "cuda"  # the DataLoader pinned them: copy while the step runs
        return tuple(t.to(self.device, non_blocking=pinned) for t in (images, labels, indices)), bad

    def _finish(self, moved, bad):
        """The batch as the trainer takes it; its unreadable files raise or are noted now, when it is its turn
        (not when it was read ahead), so every batch before it trains first."""
        for item in bad:
            if not self.skip_bad_files:
                raise item.error()
            self.bad_files[item.path] = item.reason
        if moved is None:  # skipping it would leave the epoch a step short of len(self): refuse instead
            raise DataError(f"data: every image of a batch is unreadable ({', '.join(b.path for b in bad[:3])}, "
                            f"...): is {self.data.root or 'the data folder'} damaged?", Path(bad[0].path))
        images, labels, indices = moved
        x = normalize(images, self._mean, self._std, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, labels, indices) if self.with_indices else (x, labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch, start = self.epoch, self._start_batch
        self._start_batch = 0
        ahead = None  # the next batch, already on its way to the device
        for batch in self._batches(self.batch_keys(epoch, start)):
            moved = self._to_device(batch)
            if ahead is not None:
                yield self._finish(*ahead)
            ahead = moved
        if ahead is not None:
            yield self._finish(*ahead)

    def __repr__(self) -> str:
        return (f"StreamingLoader({self.data.name!r}, n={len(self.data)}, batch_size={self.batch_size}, "
                f"batches={len(self)}, workers={self.workers}, rank={self.rank}/{self.world_size})")
