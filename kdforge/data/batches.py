"""The loader for any dataset of a run: `TensorLoader` for a split in memory, `StreamingLoader` for one on disk."""

from __future__ import annotations

import torch

from .augment import Augment
from .loader import TensorLoader


def make_loader(data, batch_size: int, *, shuffle: bool, drop_last: bool, device, seed: int,
                augment: Augment | None = None, channels_last: bool = False, rank: int = 0, world_size: int = 1,
                with_indices: bool = False, workers: int = 4, skip_bad_files: bool = False):
    """Batches of `data` on `device`. A streamed split crops by its own `train` flag (RandomResizedCrop + flip, or
    resize + centre crop): `augment` applies to in-memory splits only."""
    if getattr(data, "streaming", False):
        from .streaming import StreamingLoader

        return StreamingLoader(data, batch_size, shuffle=shuffle, drop_last=drop_last, device=device, seed=seed,
                               workers=workers, channels_last=channels_last, rank=rank, world_size=world_size,
                               with_indices=with_indices, skip_bad_files=skip_bad_files)
    return TensorLoader(data, batch_size, shuffle=shuffle, drop_last=drop_last, device=torch.device(device),
                        augment=augment, seed=seed, channels_last=channels_last, rank=rank, world_size=world_size,
                        with_indices=with_indices)


def subset_loader(data, indices, batch_size: int, *, device, channels_last: bool = False,
                  skip_bad: bool | None = None):
    """Batches of the images `indices` of `data`, in order, without augmentation, held in memory (a streamed split's
    are decoded first: keep `indices` few): dry runs, hint probes, attention maps."""
    from .streaming.dataset import in_memory

    return TensorLoader(in_memory(data.subset(indices), skip_bad), batch_size, shuffle=False, drop_last=False,
                        device=torch.device(device), augment=None, seed=0, channels_last=channels_last)
