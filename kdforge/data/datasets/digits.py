"""``digits``: scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 (or `image_size`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .._io import mean_std
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset

SPLIT_SEED = 0  # fixed: the split never depends on the run's seed
TEST_SIZE = 360  # 1437 train / 360 test
SIZE = 32
#: the sizes `image_size` may take: the native 8x8 and bilinear upsamplings of it
SIZES = (8, 16, 24, 32, 64)


@lru_cache(maxsize=2)
def _prepared(size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()  # bundled with scikit-learn: no download
    x = torch.from_numpy(d.images.astype(np.float32))  # (1797, 8, 8), values 0..16
    x = (x * (255.0 / 16.0)).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    y = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    idx_train.sort()
    idx_test.sort()
    for a in (x, y, idx_train, idx_test):
        a.flags.writeable = False
    return x, y, idx_train, idx_test


@register_dataset("digits", description="scikit-learn 8x8 digits upsampled to 32x32 (built in, no files)")
def load_digits_dataset(root, split: str, *, channels: int = 1, image_size: int = SIZE) -> ImageTensorDataset:
    """1797 digits, fixed stratified 1437/360 split (seed 0); ``root`` is ignored.

    Pixels are scaled from 0..16 to 0..255 and upsampled once to 32x32
    (bilinear; ``image_size`` 8 keeps the native size, 16, 24 or 64 upsample less or more: the test
    suite trains at 16 for a quarter of the work). ``channels=3`` repeats the grey channel. Mean/std
    come from the training split.
    """
    if channels not in (1, 3):
        raise ValueError(f"digits: channels must be 1 or 3, got {channels}")
    if type(image_size) is not int or image_size not in SIZES:
        raise ValueError(f"digits: image_size must be one of {', '.join(map(str, SIZES))}, got {image_size!r}")
    x, y, idx_train, idx_test = _prepared(image_size)
    idx = idx_train if split == "train" else idx_test
    images = torch.from_numpy(x[idx])  # fancy indexing copies
    labels = torch.from_numpy(y[idx])
    mean, std = mean_std(torch.from_numpy(x[idx_train]))
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
        mean, std = mean * 3, std * 3
    return ImageTensorDataset(
        images=images,
        labels=labels,
        classes=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        name="digits",
    )
