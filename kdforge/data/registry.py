"""Dataset loaders registered by name."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

from kdforge.registry import Registry

from .errors import DataOptionError, UnknownDatasetError
from .tensor_dataset import ImageTensorDataset

__all__ = [
    "DatasetSpec",
    "register_dataset",
    "load_dataset",
    "dataset_names",
    "dataset_spec",
    "DEFAULT_DATASET",
]

DEFAULT_DATASET = "digits"

Loader = Callable[..., ImageTensorDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered loader: ``loader(root, split, **options) -> ImageTensorDataset``."""

    name: str
    loader: Loader
    splits: tuple[str, ...] | None  # None: any split name (e.g. imagefolder sub-folders)
    description: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        params = list(inspect.signature(self.loader).parameters.values())
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _discover() -> None:
    from . import datasets  # noqa: F401  (registers the built-in loaders)


#: names matched case-insensitively, ignoring ``-`` and ``_`` (``"CIFAR-10"`` finds ``cifar10``)
DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", "a `DatasetSpec`: loader(root, split, **options) -> ImageTensorDataset",
    lambda name, close, names: UnknownDatasetError(name, names, close), key=_key, discover=_discover)


def register_dataset(
    name: str, *, splits: tuple[str, ...] | None = ("train", "test"), description: str = ""
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root, split, *, option=...)`` under ``name``.

    Names are matched case-insensitively, ignoring ``-`` and ``_``
    (``"CIFAR-10"`` finds ``cifar10``).
    """

    def deco(fn: Loader) -> Loader:
        known = DATASETS.find(name)
        if known is not None and known.loader is not fn:
            raise ValueError(f"a dataset named {name!r} is already registered")
        if known is None:
            DATASETS.add(name, DatasetSpec(name=name, loader=fn, splits=splits, description=description))
        return fn

    return deco


def dataset_names() -> list[str]:
    """Names of all registered datasets, sorted."""
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """The registration of ``name``; raises :class:`UnknownDatasetError` with close matches."""
    return DATASETS.get(name)


def load_dataset(
    name: str = DEFAULT_DATASET,
    root: str | os.PathLike | None = None,
    split: str = "train",
    **kw,
) -> ImageTensorDataset:
    """Load split ``split`` of dataset ``name`` as one in-memory :class:`ImageTensorDataset`.

    ``root`` is the data folder (ignored by ``digits``; ``None`` means
    ``$KDFORGE_DATA_ROOT`` or ``./data``). Extra keyword options go to the
    loader (e.g. ``channels=3`` for digits, ``label_type='coarse'`` for
    CIFAR-100, ``image_size=64`` for imagefolder).
    """
    spec = dataset_spec(name)
    if spec.splits is not None and split not in spec.splits:
        raise DataOptionError(
            f"data split: dataset {spec.name!r} has splits {', '.join(spec.splits)}; got split={split!r}"
        )
    unknown = sorted(set(kw) - set(spec.options))
    if unknown:
        opts = ", ".join(spec.options) or "none"
        raise DataOptionError(
            f"data.options: dataset {spec.name!r} does not take option(s) {', '.join(unknown)}; "
            f"its options: {opts}"
        )
    ds = spec.loader(root, split, **kw)
    if not isinstance(ds, ImageTensorDataset):
        raise TypeError(f"loader for {spec.name!r} returned {type(ds).__name__}, not ImageTensorDataset")
    return ds
