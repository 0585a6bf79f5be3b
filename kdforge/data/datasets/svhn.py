"""``svhn``: the official cropped-digits MATLAB files (Format 2)."""

from __future__ import annotations

import numpy as np
import torch

from .._io import check_labels, find_dataset_dir, require_file
from ..errors import DataError
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset

SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
_URL = "http://ufldl.stanford.edu/housenumbers/"
_HOWTO = (
    "Download {file} (Format 2: cropped digits) from " + _URL + " into {{root}}."
)
_EXPECTED = (
    "a MATLAB v5 .mat file with X (uint8 array 32 x 32 x 3 x N) and y (N x 1 labels 1..10, "
    "10 meaning the digit 0)"
)


@register_dataset(
    "svhn", splits=("train", "test", "extra"), description="SVHN cropped digits, official *_32x32.mat files"
)
def load_svhn(root, split: str) -> ImageTensorDataset:
    """``root`` holds ``train_32x32.mat`` / ``test_32x32.mat`` (or has an ``svhn`` sub-folder that does)."""
    what = "svhn"
    fname = f"{split}_32x32.mat"
    how_to = _HOWTO.format(file=fname)
    folder = find_dataset_dir(
        root,
        ["svhn", "SVHN"],
        lambda p: any((p / f"{s}_32x32.mat").is_file() for s in ("train", "test", "extra")),
        what=what,
        how_to=how_to,
    )
    how_to = how_to.format(root=folder)
    path = require_file(folder / fname, what=what, expected=_EXPECTED, how_to=how_to)
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading SVHN .mat files needs scipy: pip install scipy (or pip install 'kdforge[scipy]')"
        ) from e
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(
            f"{what}: {str(path)!r} is a MATLAB v7.3 file, not the official v5 format ({e}); "
            f"expected {_EXPECTED}. {how_to}",
            path,
        ) from e
    except Exception as e:  # MatReadError, ValueError, OSError, TypeError on truncated/corrupt files
        raise DataError(
            f"{what}: cannot read {str(path)!r} ({type(e).__name__}: {e}); the file may be truncated. "
            f"Expected {_EXPECTED}. {how_to}",
            path,
        ) from e
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{what}: {str(path)!r} has no variable {key!r}; expected {_EXPECTED}. {how_to}", path)
    x, y = mat["X"], mat["y"]
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{what}: X in {str(path)!r} has shape {getattr(x, 'shape', None)}; expected (32, 32, 3, N). {how_to}",
            path,
        )
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{what}: X in {str(path)!r} has dtype {x.dtype}; expected uint8. {how_to}", path)
        x = x.astype(np.uint8)
    n = x.shape[3]
    y = np.asarray(y)
    if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise DataError(
            f"{what}: y in {str(path)!r} has shape {y.shape} for {n} images; expected ({n}, 1). {how_to}",
            path,
        )
    # official labels are 1..10 (0 is read as the digit 0 too)
    raw = check_labels(y.reshape(-1), 11, path, what=what, how_to=f"Expected {_EXPECTED}. {how_to}")
    labels = torch.where(raw == 10, torch.zeros_like(raw), raw)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (N, C, H, W)
    return ImageTensorDataset(
        images, labels, [str(i) for i in range(10)], SVHN_MEAN, SVHN_STD, name="svhn"
    )
