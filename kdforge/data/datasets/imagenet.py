"""``imagenet``: the prepared ILSVRC-2012 layout, ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

It is streamed from disk (`data/streaming/`) whenever the split would not fit `data.memory_budget_gb`, as the
full training split never does (1.28 M images, ~193 GB at 224 px). Held in memory (``data.streaming: false``,
for a small subset), it is an `imagefolder` at `image_size` with centre crops and ImageNet's statistics.
"""

from __future__ import annotations

from ..registry import register_dataset
from ..streaming.folders import IMAGENET_MEAN, IMAGENET_STD
from ..tensor_dataset import ImageTensorDataset
from .imagefolder import load_imagefolder


@register_dataset("imagenet", splits=None, description="ILSVRC-2012 folders root/{train,val}/<wnid>/*.JPEG "
                                                        "(streamed when large)")
def load_imagenet(root, split: str, *, image_size: int = 224, channels: int = 3, mean=None, std=None,
                  eval_resize: int | None = None, progress: bool | None = None) -> ImageTensorDataset:
    """The split in memory at `image_size` (`eval_resize` applies only when streaming)."""
    data = load_imagefolder(root, split, image_size=image_size, channels=channels, resize="center_crop",
                            mean=mean if mean is not None else (IMAGENET_MEAN if channels == 3 else None),
                            std=std if std is not None else (IMAGENET_STD if channels == 3 else None),
                            progress=progress)
    data.name = "imagenet"
    return data
