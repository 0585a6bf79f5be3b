"""``cinic10``: the official CINIC-10 folder tree of 32x32 PNGs."""

from __future__ import annotations

import torch

from .._io import decode_images, find_dataset_dir
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset
from .cifar import CIFAR10_CLASSES
from .imagefolder import scan_split

# Published statistics (CINIC-10 README).
CINIC10_MEAN = (0.47889522, 0.47227842, 0.43047404)
CINIC10_STD = (0.24205776, 0.23828046, 0.25874835)
_HOWTO = (
    "Download CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 "
    "(see https://github.com/BayesWatch/cinic-10) and extract it into {root}."
)


@register_dataset(
    "cinic10", splits=("train", "valid", "test"), description="CINIC-10 PNG tree root/{train,valid,test}/<class>/*.png"
)
def load_cinic10(root, split: str, *, progress: bool | None = None, num_workers: int | None = None) -> ImageTensorDataset:
    """``root`` holds ``train/ valid/ test/`` (or has a ``cinic-10`` / ``CINIC-10`` sub-folder that does).

    Grayscale PNGs are converted to RGB. Class order is CIFAR-10's.
    """
    what = "cinic10"
    folder = find_dataset_dir(
        root,
        ["CINIC-10", "cinic-10", "cinic10"],
        lambda p: any((p / s).is_dir() for s in ("train", "valid", "test")),
        what=what,
        how_to=_HOWTO,
    )
    how_to = _HOWTO.format(root=folder)
    classes, paths, labels = scan_split(
        folder / split, list(CIFAR10_CLASSES), what=what, how_to=how_to, require_all=True
    )
    images = decode_images(
        paths,
        size=32,
        channels=3,
        resize=None,
        what=what,
        expected="a 32x32 PNG (RGB or grayscale)",
        how_to=how_to,
        desc=f"{what} {split}",
        progress=progress,
        num_workers=num_workers,
    )
    return ImageTensorDataset(
        images, torch.tensor(labels, dtype=torch.int64), classes, CINIC10_MEAN, CINIC10_STD, name="cinic10"
    )
