"""``imagefolder``: any ``root/<split>/<class>/*.{png,jpg,jpeg,bmp,webp}`` tree, resized into memory."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import torch

from .._io import IMAGE_EXTENSIONS, decode_images, default_root, list_image_files, mean_std
from ..errors import DataError
from ..registry import register_dataset
from ..tensor_dataset import ImageTensorDataset

_LAYOUT = "root/<split>/<class_name>/<image>." + "|".join(e[1:] for e in IMAGE_EXTENSIONS)


def scan_split(
    split_dir: Path,
    classes: list[str] | None,
    *,
    what: str,
    how_to: str,
    require_all: bool,
) -> tuple[list[str], list[Path], list[int]]:
    """List ``split_dir/<class>/<image>`` files.

    With ``classes=None`` the classes are the sorted sub-folders. Otherwise
    they are given; a sub-folder not among them is an error, and so is a
    missing one when ``require_all``. An empty class folder is an error.
    """
    if not split_dir.is_dir():
        problem = "is a file, not a folder" if split_dir.exists() else "does not exist"
        raise DataError(f"{what}: folder {str(split_dir)!r} {problem}; expected {_LAYOUT}. {how_to}", split_dir)
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in found:
        _check_utf8_name(split_dir / name, what=what)
    if classes is None:
        classes = found
        if not classes:
            raise DataError(
                f"{what}: {str(split_dir)!r} has no class sub-folders; expected {_LAYOUT}. {how_to}", split_dir
            )
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"{what}: {str(split_dir)!r} has class folder(s) {extra} that are not among the classes "
                f"{classes}. {how_to}",
                split_dir / extra[0],
            )
        if require_all:
            missing = [c for c in classes if c not in found]
            if missing:
                raise DataError(
                    f"{what}: class folder {str(split_dir / missing[0])!r} is missing "
                    f"(expected one folder per class: {classes}). {how_to}",
                    split_dir / missing[0],
                )
    paths: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        files = list_image_files(d)
        if not files:
            raise DataError(
                f"{what}: class folder {str(d)!r} has no images (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)}). {how_to}",
                d,
            )
        paths.extend(files)
        labels.extend([k] * len(files))
    return classes, paths, labels


def _check_utf8_name(folder: Path, *, what: str) -> None:
    """A class folder's name is the class name (saved in checkpoints, printed by `predict`): it must be UTF-8."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come back from the file system as surrogates
        raise DataError(f"{what}: class folder {str(folder)!r} has a name that is not UTF-8 text "
                        f"({os.fsencode(folder.name)!r}); rename it (class names come from the folder names)",
                        folder) from None


def _check_statistics(mean, std, channels: int) -> None:
    """Given mean/std options: both or neither, one finite number per channel, std positive (checked
    before any image is decoded: a NaN here would make every input NaN)."""
    if (mean is None) != (std is None):
        raise ValueError("imagefolder: give both mean and std, or neither")
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        numbers = isinstance(values, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not numbers or len(values) != channels:
            raise ValueError(f"imagefolder: {key} must be {channels} finite number(s), one per channel, "
                             f"got {values!r}")
    if std is not None and min(std) <= 0:
        raise ValueError(f"imagefolder: std must be positive, got {std!r}")


_STATS_CACHE: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}
_STATS_LOCK = threading.Lock()


def _stats_key(split_dir: Path, paths: list[Path], image_size: int, channels: int, resize: str) -> tuple:
    last = max((p.stat().st_mtime_ns for p in paths), default=0)
    return (str(split_dir.resolve()), len(paths), last, image_size, channels, resize)


@register_dataset("imagefolder", splits=None, description="class-per-folder image tree root/<split>/<class>/*")
def load_imagefolder(
    root,
    split: str,
    *,
    image_size: int = 32,
    channels: int = 3,
    resize: str = "stretch",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    progress: bool | None = None,
    num_workers: int | None = None,
) -> ImageTensorDataset:
    """Load ``root/<split>/<class>/*`` into memory at ``image_size`` x ``image_size``.

    Classes are the sorted sub-folders of ``root/train`` when it exists (so
    every split shares one label order), else of ``root/<split>``.
    ``resize='stretch'`` resizes whole images, ``'center_crop'`` resizes the
    short side and crops the centre. ``channels`` is 3 (RGB) or 1 (grey).
    Mean/std are computed from ``root/train`` (or the split itself if there is
    no train folder) unless given.
    """
    what = "imagefolder"
    how_to = f"Arrange the images as {_LAYOUT}."
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"imagefolder: image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"imagefolder: channels must be 1 or 3, got {channels}")
    if resize not in ("stretch", "center_crop"):
        raise ValueError(f"imagefolder: resize must be 'stretch' or 'center_crop', got {resize!r}")
    _check_statistics(mean, std, channels)
    base = default_root(root)
    if not base.is_dir():
        problem = "is a file, not a folder" if base.exists() else "does not exist"
        raise DataError(f"{what}: data folder {str(base)!r} {problem}. {how_to}", base)
    train_dir = base / "train"
    split_dir = base / split
    if not split_dir.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.is_dir())
        problem = "is a file, not a folder" if split_dir.exists() else "does not exist"
        raise DataError(
            f"{what}: split folder {str(split_dir)!r} {problem} (sub-folders of {str(base)!r}: {have}). {how_to}",
            split_dir,
        )
    if split != "train" and train_dir.is_dir():
        classes, train_paths, _ = scan_split(train_dir, None, what=what, how_to=how_to, require_all=True)
        classes, paths, labels = scan_split(split_dir, classes, what=what, how_to=how_to, require_all=False)
    else:
        classes, paths, labels = scan_split(split_dir, None, what=what, how_to=how_to, require_all=True)
        train_paths = paths if split == "train" else None

    kw = dict(
        size=image_size,
        channels=channels,
        resize=resize,
        what=what,
        expected="an image file Pillow can read",
        how_to=how_to,
        progress=progress,
        num_workers=num_workers,
    )
    images = decode_images(paths, desc=f"{what} {split}", **kw)

    if mean is None:
        stats_dir = train_dir if train_paths is not None else split_dir
        stats_paths = train_paths if train_paths is not None else paths
        key = _stats_key(stats_dir, stats_paths, image_size, channels, resize)
        with _STATS_LOCK:
            stats = _STATS_CACHE.get(key)
        if stats is None:
            stats_images = images if stats_paths is paths else decode_images(stats_paths, desc=f"{what} train (statistics)", **kw)
            stats = mean_std(stats_images)
            with _STATS_LOCK:
                _STATS_CACHE[key] = stats
        mean, std = stats
    name = f"imagefolder:{os.path.basename(os.path.normpath(str(base)))}"
    return ImageTensorDataset(images, torch.tensor(labels, dtype=torch.int64), classes, mean, std, name=name)
