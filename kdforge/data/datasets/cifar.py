"""``cifar10`` and ``cifar100``: the official "python version" pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._io import (
    check_labels,
    decode_names,
    find_dataset_dir,
    load_pickle,
    pickle_get,
    require_file,
)
from ..errors import DataError
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
    "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
    "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree "
    "orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum "
    "rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider "
    "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things "
    "large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals "
    "non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2"
).split()

# Published per-channel statistics of the training sets.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_HOWTO = "Download {tar} from " + _URL + " and extract it into {{root}} (it unpacks to {{root}}/{folder}/)."


def _images_from_batch(d: dict, path: Path, *, what: str, expected: str, how_to: str) -> np.ndarray:
    data = pickle_get(d, "data", path, what=what, expected=expected, how_to=how_to)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (
            f"an array of dtype {data.dtype} and shape {data.shape}"
            if isinstance(data, np.ndarray)
            else f"a {type(data).__name__}"
        )
        raise DataError(
            f"{what}: b'data' in {str(path)!r} is {desc}; expected a uint8 array of shape (N, 3072) "
            f"(rows of 1024 red, 1024 green, 1024 blue values). {how_to}",
            path,
        )
    return data.reshape(-1, 3, 32, 32)  # row-major RGB planes


def _read_split(
    files: list[Path], label_key: str, num_classes: int, *, what: str, expected: str, how_to: str
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in files:
        require_file(path, what=what, expected=expected, how_to=how_to)
        d = load_pickle(path, what=what, expected=expected, how_to=how_to)
        x = _images_from_batch(d, path, what=what, expected=expected, how_to=how_to)
        y = pickle_get(d, label_key, path, what=what, expected=expected, how_to=how_to)
        try:
            y = np.asarray(y)
        except Exception as e:
            raise DataError(f"{what}: b'{label_key}' in {str(path)!r} is not a list of integers. {how_to}", path) from e
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{what}: {str(path)!r} has {x.shape[0]} images but b'{label_key}' has shape {y.shape}; "
                f"expected {expected}. {how_to}",
                path,
            )
        labels.append(check_labels(y, num_classes, path, what=what, how_to=how_to))
        images.append(x)
    x = np.concatenate(images) if len(images) > 1 else np.ascontiguousarray(images[0])
    return torch.from_numpy(x), torch.cat(labels)


def _read_names(path: Path, key: str, fallback: list[str], *, what: str, expected: str, how_to: str) -> list[str]:
    if not path.is_file():
        return list(fallback)  # the meta file only carries names; the official ones are known
    d = load_pickle(path, what=what, expected=expected, how_to=how_to)
    names = decode_names(pickle_get(d, key, path, what=what, expected=expected, how_to=how_to), path, what=what, how_to=how_to)
    if len(names) != len(fallback):
        raise DataError(
            f"{what}: {str(path)!r} lists {len(names)} names under b'{key}', expected {len(fallback)}. {how_to}",
            path,
        )
    return names


@register_dataset("cifar10", description="CIFAR-10, official python pickles (cifar-10-batches-py)")
def load_cifar10(root, split: str) -> ImageTensorDataset:
    """``root`` is ``cifar-10-batches-py`` itself or the folder containing it."""
    what = "cifar10"
    how_to = _HOWTO.format(tar="cifar-10-python.tar.gz", folder="cifar-10-batches-py")
    folder = find_dataset_dir(
        root,
        ["cifar-10-batches-py"],
        lambda p: (p / "data_batch_1").is_file() or (p / "test_batch").is_file() or (p / "batches.meta").is_file(),
        what=what,
        how_to=how_to,
    )
    how_to = how_to.format(root=folder.parent if folder.name == "cifar-10-batches-py" else folder)
    expected = (
        "a CIFAR-10 python pickle: a dict with b'data' (10000 x 3072 uint8, row-major R, G, B planes "
        "of 32x32) and b'labels' (list of ints in 0..9)"
    )
    names = ["data_batch_%d" % i for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = _read_split(
        [folder / n for n in names], "labels", 10, what=what, expected=expected, how_to=how_to
    )
    classes = _read_names(
        folder / "batches.meta",
        "label_names",
        CIFAR10_CLASSES,
        what=what,
        expected="a dict with b'label_names' (10 class names)",
        how_to=how_to,
    )
    return ImageTensorDataset(images, labels, classes, CIFAR10_MEAN, CIFAR10_STD, name="cifar10")


@register_dataset("cifar100", description="CIFAR-100, official python pickles (cifar-100-python)")
def load_cifar100(root, split: str, *, label_type: str = "fine") -> ImageTensorDataset:
    """``root`` is ``cifar-100-python`` itself or the folder containing it.

    ``label_type='coarse'`` uses the 20 super-classes.
    """
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
    what = "cifar100"
    how_to = _HOWTO.format(tar="cifar-100-python.tar.gz", folder="cifar-100-python")
    folder = find_dataset_dir(
        root,
        ["cifar-100-python"],
        lambda p: (p / "train").is_file() or (p / "test").is_file() or (p / "meta").is_file(),
        what=what,
        how_to=how_to,
    )
    how_to = how_to.format(root=folder.parent if folder.name == "cifar-100-python" else folder)
    fallback = CIFAR100_FINE if label_type == "fine" else CIFAR100_COARSE
    expected = (
        "a CIFAR-100 python pickle: a dict with b'data' (N x 3072 uint8, row-major R, G, B planes of 32x32), "
        "b'fine_labels' (ints in 0..99) and b'coarse_labels' (ints in 0..19)"
    )
    images, labels = _read_split(
        [folder / split], f"{label_type}_labels", len(fallback), what=what, expected=expected, how_to=how_to
    )
    classes = _read_names(
        folder / "meta",
        f"{label_type}_label_names",
        fallback,
        what=what,
        expected="a dict with b'fine_label_names' (100 names) and b'coarse_label_names' (20 names)",
        how_to=how_to,
    )
    name = "cifar100" if label_type == "fine" else "cifar100-coarse"
    return ImageTensorDataset(images, labels, classes, CIFAR100_MEAN, CIFAR100_STD, name=name)
