"""``fashion_mnist``, ``mnist``, ``kmnist``: the official IDX files (raw or ``.gz``)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import check_labels, default_root
from ..errors import DataError
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: unsigned bytes, 3 dimensions / 1 dimension
NATIVE, PADDED = 28, 32
PAD = (PADDED - NATIVE) // 2

# Debian package dataset-fashion-mnist (`make data`) installs the four .gz files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(i) for i in range(10)]
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]  # kmnist_classmap.csv romaji

# Mean/std of the training images' 28x28 pixels in [0, 1], padding not included. The same values
# are used at 32x32: `normalize` maps the zero padding to (0 - mean) / std, the value of a black
# pixel, as torchvision's Pad + Normalize would.
# Fashion-MNIST: computed here from the official train-images-idx3-ubyte.gz (60,000 images).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860406,), (0.3530242,)
# MNIST and KMNIST: the widely published values (not recomputed here).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
KMNIST_MEAN, KMNIST_STD = (0.1918,), (0.3483,)

_FILES = {"train": "train", "test": "t10k"}
_IMAGES_EXPECTED = (
    f"an IDX image file: big-endian int32 magic {IMAGES_MAGIC}, N, 28, 28, then N*28*28 uint8 pixels"
)
_LABELS_EXPECTED = f"an IDX label file: big-endian int32 magic {LABELS_MAGIC}, N, then N uint8 labels 0..9"
_FILE_LIST = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


@dataclass(frozen=True)
class _Source:
    name: str
    folders: tuple[str, ...]  # sub-folders of data.root searched before data.root itself
    how_to: str  # with {root}: the folder the files belong in
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    system_dir: bool = False  # also search FASHION_MNIST_SYSTEM_DIR when no root is given


def _download(url: str, lead: str = "Download") -> str:
    return f"{lead} the official files ({_FILE_LIST}, raw or .gz) from {url} into {{root}}."


_SOURCES = {
    "fashion_mnist": _Source(
        "fashion_mnist",
        ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
        "Run `make data` or `apt-get install -y dataset-fashion-mnist` (Debian: files in "
        f"{FASHION_MNIST_SYSTEM_DIR}), or "
        + _download("https://github.com/zalandoresearch/fashion-mnist", lead="download"),
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        system_dir=True,
    ),
    "mnist": _Source(
        "mnist",
        ("mnist", "MNIST", "MNIST/raw"),
        _download("http://yann.lecun.com/exdb/mnist/"),
        MNIST_CLASSES,
        MNIST_MEAN,
        MNIST_STD,
    ),
    "kmnist": _Source(
        "kmnist",
        ("kmnist", "KMNIST", "KMNIST/raw"),
        _download("https://github.com/rois-codh/kmnist (MNIST format)"),
        KMNIST_CLASSES,
        KMNIST_MEAN,
        KMNIST_STD,
    ),
}


def _file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (raw first)."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _has_idx(folder: Path) -> bool:
    """Whether ``folder`` holds at least one of the four IDX files."""
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return folder.is_dir() and any(_file(folder, f"{s}-{k}") is not None for s in _FILES.values() for k in kinds)


def _locate(root, src: _Source) -> Path:
    """The folder holding the IDX files: a sub-folder of the data root, the root itself, or (fashion_mnist,
    no root given) the Debian package's folder."""
    base = default_root(root)
    bases = [base]
    if root is None and src.system_dir:
        bases.append(FASHION_MNIST_SYSTEM_DIR)
    looked = []
    for b in bases:
        for cand in [b / f for f in src.folders] + [b]:
            if _has_idx(cand):
                return cand
            looked.append(repr(str(cand)))
    how_to = src.how_to.format(root=base)
    if len(bases) == 1 and not base.is_dir():
        problem = "is a file, not a folder" if base.exists() else "does not exist"
        raise DataError(f"{src.name}: data folder {str(base)!r} {problem}. {how_to}", base)
    raise DataError(f"{src.name}: no IDX files found (looked in {', '.join(looked)}). {how_to}", base)


def _read(path: Path, *, what: str, expected: str, how_to: str) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut .gz raises EOFError
        raise DataError(
            f"{what}: cannot read {str(path)!r} ({type(e).__name__}: {e}); the file may be truncated. "
            f"Expected {expected}. {how_to}",
            path,
        ) from e


def _parse_idx(path: Path, magic: int, ndim: int, *, what: str, expected: str, how_to: str) -> np.ndarray:
    """The uint8 array of an IDX file, after checking its magic number and that its size matches its header."""
    buf = _read(path, what=what, expected=expected, how_to=how_to)
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{what}: {str(path)!r} is {len(buf)} bytes, shorter than the {header}-byte IDX header: "
            f"the file is truncated. Expected {expected}. {how_to}",
            path,
        )
    found, *dims = (int(v) for v in np.frombuffer(buf, ">i4", count=1 + ndim))
    if found != magic:
        other = {IMAGES_MAGIC: " (that of an image file)", LABELS_MAGIC: " (that of a label file)"}.get(found, "")
        raise DataError(
            f"{what}: {str(path)!r} has magic number {found}{other}, expected {magic}: "
            f"not an official IDX file of this kind. Expected {expected}. {how_to}",
            path,
        )
    if dims[0] < 0 or dims[1:] != [NATIVE] * (ndim - 1):
        raise DataError(
            f"{what}: {str(path)!r} has header dimensions {tuple(dims)}, expected "
            f"{('N',) + (NATIVE,) * (ndim - 1)}. Expected {expected}. {how_to}",
            path,
        )
    size = header + int(np.prod(dims))
    if len(buf) != size:
        problem = "it is truncated" if len(buf) < size else f"{len(buf) - size} bytes follow the data"
        raise DataError(
            f"{what}: {str(path)!r} is {len(buf)} bytes but its header {tuple(dims)} needs {size}: "
            f"{problem}. Expected {expected}. {how_to}",
            path,
        )
    return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def _load(src: _Source, root, split: str, image_size: int) -> ImageTensorDataset:
    what = src.name
    if type(image_size) is not int or image_size not in (PADDED, NATIVE):
        raise ValueError(
            f"{what}: image_size must be {PADDED} (28x28 zero-padded by {PAD} on each side) or {NATIVE} "
            f"(native), got {image_size!r}"
        )
    folder = _locate(root, src)
    how_to = src.how_to.format(root=folder)
    paths = []
    for stem, expected in ((f"{_FILES[split]}-images-idx3-ubyte", _IMAGES_EXPECTED),
                           (f"{_FILES[split]}-labels-idx1-ubyte", _LABELS_EXPECTED)):
        path = _file(folder, stem)
        if path is None:
            missing = folder / stem
            raise DataError(
                f"{what}: missing file {str(missing)!r} (or {missing.name}.gz); expected {expected}. {how_to}",
                missing,
            )
        paths.append(path)
    x = _parse_idx(paths[0], IMAGES_MAGIC, 3, what=what, expected=_IMAGES_EXPECTED, how_to=how_to)
    y = _parse_idx(paths[1], LABELS_MAGIC, 1, what=what, expected=_LABELS_EXPECTED, how_to=how_to)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{what}: {str(paths[0])!r} holds {x.shape[0]} images but {str(paths[1])!r} holds "
            f"{y.shape[0]} labels; the two files must be of the same split. {how_to}",
            paths[0],
        )
    labels = check_labels(y, 10, paths[1], what=what, how_to=how_to)
    if image_size == NATIVE:
        images = np.array(x[:, None])  # copy: the parsed buffer is read-only
    else:
        images = np.zeros((x.shape[0], 1, PADDED, PADDED), np.uint8)
        images[:, 0, PAD : PAD + NATIVE, PAD : PAD + NATIVE] = x
    return ImageTensorDataset(torch.from_numpy(images), labels, list(src.classes), src.mean, src.std, name=what)


@register_dataset("fashion_mnist", description="Fashion-MNIST, official IDX files (raw or .gz)")
def load_fashion_mnist(root, split: str, *, image_size: int = PADDED) -> ImageTensorDataset:
    """``root`` holds the four IDX files (or a ``fashion-mnist`` sub-folder does); with no root given,
    ``$KDFORGE_DATA_ROOT`` or ``./data``, then the Debian package's folder, are searched.

    ``image_size=32`` (default) pads the 28x28 images with 2 zero pixels on each side, so the CIFAR
    models apply unchanged; ``image_size=28`` keeps them native. One channel.
    """
    return _load(_SOURCES["fashion_mnist"], root, split, image_size)


@register_dataset("mnist", description="MNIST, official IDX files (raw or .gz)")
def load_mnist(root, split: str, *, image_size: int = PADDED) -> ImageTensorDataset:
    """``root`` holds the four IDX files (or an ``mnist`` / ``MNIST/raw`` sub-folder does); ``image_size``
    as for ``fashion_mnist``."""
    return _load(_SOURCES["mnist"], root, split, image_size)


@register_dataset("kmnist", description="Kuzushiji-MNIST, official IDX files (raw or .gz)")
def load_kmnist(root, split: str, *, image_size: int = PADDED) -> ImageTensorDataset:
    """``root`` holds the four IDX files (or a ``kmnist`` / ``KMNIST/raw`` sub-folder does); ``image_size``
    as for ``fashion_mnist``."""
    return _load(_SOURCES["kmnist"], root, split, image_size)
