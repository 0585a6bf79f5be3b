"""``webdataset``: tar shards written by `kdforge pack` (or any WebDataset `<key>.jpg` + `<key>.cls` shards).
Always streamed (`data/shards/reader.py`); `load_dataset` decodes a split into memory (centre crops), for
small sets and inspection."""

from __future__ import annotations

from types import SimpleNamespace

from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset


@register_dataset("webdataset", splits=None, description="tar shards <split>-NNNNNN.tar (kdforge pack; streamed)")
def load_webdataset(root, split: str, *, image_size: int = 224, channels: int = 3, mean=None, std=None,
                    eval_resize: int | None = None, shards=None, progress: bool | None = None) -> ImageTensorDataset:
    """The split's centre crops in memory."""
    from ..streaming.folders import open_streaming_split

    options = {k: v for k, v in dict(image_size=image_size, channels=channels, mean=mean, std=std,
                                     eval_resize=eval_resize, shards=shards).items() if v is not None}
    d = SimpleNamespace(name="webdataset", root=root, options=options, train_split="train",
                        augment=SimpleNamespace(hflip=False))
    return open_streaming_split(d, split, train=False).materialize()
