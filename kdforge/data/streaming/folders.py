"""Opening `imagefolder` / `imagenet` splits as `StreamingImageDataset`s, and deciding when to stream."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kdforge.errors import ConfigError

from .._io import default_root, mean_std
from ..errors import DataError, DataOptionError
from .dataset import StreamingImageDataset

STREAMABLE = ("imagefolder", "imagenet", "webdataset")
#: ImageNet's per-channel statistics (the usual values, from its training set)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: the options a streamed folder takes; the in-memory ones (resize, num_workers) do not apply
OPTIONS = ("image_size", "channels", "mean", "std", "eval_resize", "progress", "shards")
#: training images the statistics of a streamed imagefolder are estimated from, when not given
STATS_SAMPLE = 1000


def _defaults(name: str) -> dict:
    return {"image_size": 224 if name == "imagenet" else 32, "channels": 3}


def dataset_name(name: str) -> str:
    from ..registry import dataset_spec

    return dataset_spec(name).name


def streamable(name: str) -> bool:
    return dataset_name(name) in STREAMABLE


def scan_folder(root, split: str, name: str):
    """(classes, files, labels) of `root/<split>`; the classes are those of `root/train` where it exists."""
    from ..datasets.imagefolder import scan_split

    base = default_root(root)
    how_to = f"Arrange the images as root/<split>/<class>/<image> ({name})."
    train = base / "train"
    if split != "train" and train.is_dir():  # the classes of train/ (its folder names: no need to list its files)
        classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        return scan_split(base / split, classes or None, what=name, how_to=how_to, require_all=False)
    return scan_split(base / split, None, what=name, how_to=how_to, require_all=True)


def should_stream(data_config) -> bool:
    """Whether `data_config` streams: `streaming` when set, else whether the training split held in memory as
    uint8 would exceed `memory_budget_gb` (said on stderr when it does)."""
    d = data_config
    if dataset_name(d.name) == "webdataset":
        if d.streaming is False:
            raise ConfigError("data.streaming: webdataset shards are always streamed (drop data.streaming: false)")
        return True
    if d.streaming is False:
        return False
    if not streamable(d.name):
        if d.streaming:
            raise ConfigError(f"data.streaming: only image folders ({', '.join(STREAMABLE)}) are streamed; "
                              f"{d.name} is held in memory (drop data.streaming)")
        return False
    if d.streaming:
        return True
    options = {**_defaults(d.name), **d.options}
    size, channels = options["image_size"], options["channels"]
    if not (isinstance(size, int) and isinstance(channels, int)) or isinstance(size, bool):
        return False  # the in-memory loader says what is wrong with them
    try:
        _, paths, _ = scan_folder(d.root, d.train_split, d.name)
    except DataError:
        return False  # as does it for a missing or malformed folder
    need = len(paths) * channels * size * size / 1e9
    if need <= d.memory_budget_gb:
        return False
    print(f"data: {d.name} {d.train_split} at {size}x{size} would take {need:.1f} GB in memory (more than "
          f"data.memory_budget_gb={d.memory_budget_gb:g}): streaming it from disk with {d.workers} workers per "
          f"process, with RandomResizedCrop + flip for training and resize + centre crop for evaluation instead "
          f"of the in-memory pad-crop + flip (set data.streaming to choose)", file=sys.stderr, flush=True)
    return True


def open_streaming_split(data_config, split: str, *, train: bool) -> StreamingImageDataset:
    """Split `split` of `data_config`'s folder, with the training crops (`train`) or the evaluation ones."""
    d = data_config
    unknown = sorted(set(d.options) - set(OPTIONS))
    if unknown:
        raise DataOptionError(f"data.options: a streamed {d.name} does not take {', '.join(unknown)} (RandomResizedCrop "
                              f"for training, eval_resize + centre crop for evaluation); its options: "
                              f"{', '.join(OPTIONS)}")
    options = {**_defaults(d.name), **d.options}
    size, channels = options["image_size"], options["channels"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataOptionError(f"data.options.image_size: a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise DataOptionError(f"data.options.channels: 1 or 3, got {channels!r}")
    eval_resize = options.get("eval_resize") or round(size / 0.875)  # 256 for 224: the usual ratio
    if isinstance(eval_resize, bool) or not isinstance(eval_resize, int) or eval_resize < size:
        raise DataOptionError(f"data.options.eval_resize: an integer >= image_size ({size}), got {eval_resize!r}")
    data = _open(d, split, train=train, size=size, eval_resize=eval_resize, channels=channels)
    mean, std = options.get("mean"), options.get("std")
    if (mean is None) != (std is None):
        raise DataOptionError(f"data.options: give both mean and std for {d.name}, or neither")
    if mean is None:
        if dataset_name(d.name) == "imagenet" and channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = _estimated_statistics(d, size, eval_resize, channels)
    data.mean, data.std = tuple(map(float, mean)), tuple(map(float, std))
    data.skip_bad = bool(getattr(d, "skip_bad_files", False))  # hint probes and the dry run leave bad files out too
    return data


def _open(d, split: str, **crops) -> StreamingImageDataset:
    """The split's files (or shards) with statistics 0 / 1, before `open_streaming_split` sets them."""
    channels = crops["channels"]
    if dataset_name(d.name) == "webdataset":
        from ..shards import open_shards

        return open_shards(d.root, split, patterns=d.options.get("shards"), hflip=d.augment.hflip, **crops)
    classes, paths, labels = scan_folder(d.root, split, d.name)
    base = default_root(d.root)
    return StreamingImageDataset([str(p) for p in paths], torch.tensor(labels, dtype=torch.int64), classes,
                                 (0.0,) * channels, (1.0,) * channels, f"{d.name}:{Path(base).name}",
                                 crops["size"], crops["eval_resize"], channels, crops["train"], d.augment.hflip,
                                 str(base))


_STATS: dict[tuple, tuple] = {}


def _estimated_statistics(d, size: int, eval_resize: int, channels: int):
    """Mean/std of up to `STATS_SAMPLE` evenly spaced training images (centre crops): a streamed split is too big
    to decode whole for its statistics."""
    key = (d.name, str(default_root(d.root).resolve()), d.train_split, size, eval_resize, channels)
    if key not in _STATS:
        train = _open(d, d.train_split, train=False, size=size, eval_resize=eval_resize, channels=channels)
        pick = torch.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).round().long().unique()
        _STATS[key] = mean_std(train.subset(pick).materialize(skip_bad=True).images)  # a bad file: when trained on
    return _STATS[key]


def saved_streamed_split(data_section: dict, root, split: str):
    """Split `split` (centre crops) of a saved run's `data:` section where that run streamed its data, else None
    (`kdforge eval`, `kdforge hints` on a run folder)."""
    from kdforge.config import DataConfig
    from kdforge.config_values import dataclass_from_dict

    d = dataclass_from_dict(DataConfig, {**data_section, "root": root}, "data")
    return open_streaming_split(d, split, train=False) if should_stream(d) else None
