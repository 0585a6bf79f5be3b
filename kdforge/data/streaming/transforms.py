"""The standard ImageNet input pipeline, per image and seeded: RandomResizedCrop + horizontal flip for training,
resize of the short side + centre crop for evaluation (He et al. 2016 / Szegedy et al. 2015; torchvision's
reference recipe). Written here on Pillow; the crop-box sampling follows torchvision's published algorithm
(10 tries of a random area in `scale` and log-uniform aspect ratio in `ratio`, else a centre crop clamped to
`ratio`)."""

from __future__ import annotations

import math
import random

import numpy as np

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def random_resized_box(width: int, height: int, rng: random.Random, scale=SCALE, ratio=RATIO
                       ) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop of a `width` x `height` image."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def open_image(path, mode: str):
    """The decoded image at `path` in Pillow `mode` ('RGB' or 'L'); Pillow's errors for a corrupt file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # a truncated or corrupt file fails here, not later in a worker's resize
        if im.mode in ("P", "PA") and "transparency" in im.info:
            im = im.convert("RGBA")
        return im.convert(mode)


def train_crop(im, size: int, seed: int, hflip: bool) -> np.ndarray:
    """RandomResizedCrop(`size`) then a horizontal flip with probability 1/2, both drawn from `seed`."""
    from PIL import Image

    rng = random.Random(seed)
    left, top, w, h = random_resized_box(im.width, im.height, rng)
    out = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if hflip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def resized_short_side(width: int, height: int, resize: int) -> tuple[int, int]:
    """(w, h) with the short side `resize` and the long side scaled and truncated, as torchvision's Resize(int)."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central `size` x `size`, offsets rounded as torchvision's CenterCrop."""
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def eval_crop(im, size: int, resize: int) -> np.ndarray:
    """The short side resized to `resize` (bilinear), then the central `size` x `size`."""
    from PIL import Image

    w, h = resized_short_side(im.width, im.height, resize)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im.crop(centre_box(w, h, size)))
