"""Image folders read from disk during training instead of held in memory (`data.streaming`): files are
decoded and augmented in DataLoader worker processes; the order, the shards over ranks and every crop depend
only on (seed, epoch, index), so any worker count gives the same batches and `--resume` continues mid-epoch.

- `transforms.py`: the standard ImageNet crops (RandomResizedCrop + flip; resize + centre crop), seeded per image;
- `dataset.py`: `StreamingImageDataset`, a split as file paths and labels;
- `loader.py`: `StreamingLoader`, batches on the device with `TensorLoader`'s interface;
- `folders.py`: opening `imagefolder` / `imagenet` splits, and when to stream.
"""

from .dataset import BadImage, StreamingImageDataset
from .folders import open_streaming_split, should_stream
from .loader import StreamingLoader

__all__ = ["BadImage", "StreamingImageDataset", "StreamingLoader", "open_streaming_split", "should_stream"]
