"""`StreamingImageDataset`: one split of an image folder as file paths and labels, decoded on demand."""

from __future__ import annotations

import io
import os
from collections import OrderedDict

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from .tables import Locations, StringTable
from .transforms import eval_crop, open_image, train_crop

#: what a corrupt or unreadable file raises in Pillow (and the OS)
READ_ERRORS = (OSError, ValueError, SyntaxError)


class BadImage(NamedTuple):
    """A file that could not be read, in place of its image (the loader skips it or raises a `DataError`)."""

    path: str
    reason: str

    def error(self):
        """The one-line `DataError` for this file, saying how to go on."""
        from ..errors import DataError

        return DataError(f"data: cannot read image {self.path} ({self.reason}); replace or remove it, or set "
                         f"data.skip_bad_files: true to skip unreadable files", Path(self.path))


@dataclass
class StreamingImageDataset:
    """A split as `paths` and `labels`; `dataset[(index, seed)]` decodes one image to uint8 ``(C, S, S)``.

    ``train=True`` crops with RandomResizedCrop(`image_size`) (+ flip when `hflip`) drawn from `seed`;
    ``train=False`` resizes the short side to `eval_resize` and takes the centre. Same fields as
    `ImageTensorDataset` where the engine reads them (`classes`, `mean`, `std`, `name`, `labels`).
    """

    has_labels: ClassVar[bool] = True
    streaming: ClassVar[bool] = True
    paths: StringTable  # (a list of str is turned into one)
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    image_size: int = 224
    eval_resize: int = 256
    channels: int = 3
    train: bool = False
    hflip: bool = True
    root: str = field(default="")
    #: where each image's bytes lie inside a file ((file, offset, size): a tar shard's member, `data/shards/`);
    #: None: `paths` are the image files themselves
    locations: Locations | None = None
    #: `materialize` leaves unreadable files out instead of raising (data.skip_bad_files)
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.paths, StringTable):
            self.paths = StringTable(self.paths)
        if self.locations is not None and not isinstance(self.locations, Locations):
            self.locations = Locations(self.locations)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"dataset {self.name!r}: {len(self.paths)} files but {len(self.labels)} labels")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.channels

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices) -> "StreamingImageDataset":
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.int64).cpu()
        picked = idx.tolist()
        return replace(self, paths=self.paths.take(picked), labels=self.labels[idx],
                       locations=None if self.locations is None else self.locations.take(picked))

    def for_training(self, train: bool = True) -> "StreamingImageDataset":
        """The same files with the training (random) or the evaluation (centre) crop."""
        return replace(self, train=train)

    def _source(self, index: int):
        """What Pillow opens for image `index`: its file, or its bytes read from inside a shard."""
        if self.locations is None:
            return self.paths[index]
        file, offset, size = self.locations[index]
        return io.BytesIO(read_range(file, offset, size))

    def rank_order(self, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool,
                   num_samples: int) -> torch.Tensor | None:
        """This rank's order for `epoch` where the dataset decides it (shards: `data/shards/`); None: the
        loader's own (a permutation of every image, strided over ranks)."""
        return None

    def decode(self, index: int, seed: int) -> torch.Tensor | BadImage:
        path = self.paths[index]
        try:
            im = open_image(self._source(index), "RGB" if self.channels == 3 else "L")
            arr = (train_crop(im, self.image_size, seed, self.hflip) if self.train
                   else eval_crop(im, self.image_size, self.eval_resize))
        except READ_ERRORS as exc:
            return BadImage(path, " ".join(f"{type(exc).__name__}: {exc}".split())[:200])
        tensor = torch.from_numpy(np.array(arr))  # a writable copy (Pillow's buffer is read-only)
        return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)

    def __getitem__(self, key: tuple[int, int]):
        """`(index, seed)` -> (uint8 image or `BadImage`, label, index): what a worker hands the loader."""
        index, seed = key
        return self.decode(index, seed), int(self.labels[index]), index

    def materialize(self, skip_bad: bool | None = None):
        """These images (centre crops) as an in-memory `ImageTensorDataset`: for small subsets the engine
        handles in memory (the dry run's batch, hint probes); a bad file raises a `DataError`, or with
        `skip_bad` (by default the dataset's own) is left out."""
        from ..tensor_dataset import ImageTensorDataset

        skip_bad = self.skip_bad if skip_bad is None else skip_bad
        centred = self.for_training(False)
        images, kept = [], []
        for i in range(len(self)):
            image = centred.decode(i, 0)
            if isinstance(image, BadImage):
                if skip_bad:
                    continue
                raise image.error()
            images.append(image)
            kept.append(i)
        stacked = torch.stack(images) if images else torch.empty(0, self.channels, self.image_size,
                                                                 self.image_size, dtype=torch.uint8)
        return ImageTensorDataset(stacked, self.labels[torch.tensor(kept, dtype=torch.int64)].clone(),
                                  list(self.classes), self.mean, self.std, name=self.name)

    def __repr__(self) -> str:
        return (f"StreamingImageDataset(name={self.name!r}, n={len(self)}, image_size={self.image_size}, "
                f"train={self.train})")


#: open descriptors of this process's shard files, least recently used first (`read_range`)
_FILES: "OrderedDict[str, int]" = OrderedDict()
MAX_OPEN_FILES = 64


def _close_all() -> None:
    while _FILES:
        os.close(_FILES.popitem()[1])


os.register_at_fork(after_in_child=_close_all)  # a forked worker opens its own


def forget_file(file: str) -> None:
    """Close this process's descriptor of `file`, if it keeps one (the file was replaced)."""
    fd = _FILES.pop(file, None)
    if fd is not None:
        os.close(fd)


def read_range(file: str, offset: int, size: int) -> bytes:
    """`size` bytes of `file` from `offset` (`os.pread`: no shared file position), keeping at most
    `MAX_OPEN_FILES` descriptors open in this process."""
    fd = _FILES.pop(file, None)
    if fd is None:
        fd = os.open(file, os.O_RDONLY)
        while len(_FILES) >= MAX_OPEN_FILES:
            os.close(_FILES.popitem(last=False)[1])
    _FILES[file] = fd
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"{file} ends before byte {offset + size}")
    return data


def in_memory(data, skip_bad: bool | None = None):
    """`data` itself, or a streaming subset decoded into an `ImageTensorDataset` (keep it small; `skip_bad`: leave
    unreadable files out)."""
    return data.materialize(skip_bad) if getattr(data, "streaming", False) else data
