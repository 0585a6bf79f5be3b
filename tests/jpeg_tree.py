"""A small generated ImageNet-style folder (`root/{train,val}/<wnid>/*.JPEG`) for the streaming tests: images of
several sizes and aspect ratios whose colour depends on the class, and helpers that spoil files."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


def write_tree(root: Path, train_per_class: int = 50, val_per_class: int = 15, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(36, 80)), int(rng.integers(36, 80))
                base = np.zeros((h, w, 3), np.float64)
                base[..., k % 3] = 160 + 60 * (k // 3)
                noise = rng.normal(0, 40, (h, w, 3))
                pixels = np.clip(base + noise + np.linspace(0, 50, w)[None, :, None], 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


def truncate(path: Path) -> Path:
    """Keep the first third of a JPEG (its header decodes, its data ends early)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def garble(path: Path) -> Path:
    """Random bytes under an image's name."""
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path
