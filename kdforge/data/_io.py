"""Helpers shared by the dataset loaders: roots, safe unpickling, image decoding, statistics."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ROOT_ENV = "KDFORGE_DATA_ROOT"


def default_root(root: str | os.PathLike | None) -> Path:
    """``root`` as a Path; ``None`` means ``$KDFORGE_DATA_ROOT`` or ``./data``."""
    if root is None:
        root = os.environ.get(ROOT_ENV, "data")
    return Path(root).expanduser()


def find_dataset_dir(
    root: str | os.PathLike | None,
    folder_names: Sequence[str],
    is_dataset_dir: Callable[[Path], bool],
    *,
    what: str,
    how_to: str,
) -> Path:
    """Resolve ``root`` to the folder holding a data set.

    ``root`` may be that folder itself or its parent (one of ``folder_names``
    inside it). Raises :class:`DataError` naming what was looked for.
    """
    base = default_root(root)
    if not base.exists():
        raise DataError(
            f"{what}: data folder {str(base)!r} does not exist. {how_to.format(root=base)}", base
        )
    if not base.is_dir():
        raise DataError(f"{what}: {str(base)!r} is not a folder. {how_to.format(root=base)}", base)
    for name in folder_names:
        cand = base / name
        if cand.is_dir() and is_dataset_dir(cand):
            return cand
    if is_dataset_dir(base):
        return base
    looked = ", ".join(repr(str(base / n)) for n in folder_names)
    raise DataError(
        f"{what}: no data set found in {str(base)!r} (looked in {looked} and in the folder itself). "
        f"{how_to.format(root=base)}",
        base,
    )


def require_file(path: Path, *, what: str, expected: str, how_to: str) -> Path:
    """``path`` if it is a file; a :class:`DataError` saying it is missing, or a folder."""
    if path.is_dir():
        raise DataError(f"{what}: {str(path)!r} is a folder, not a file; expected {expected}. {how_to}", path)
    if not path.is_file():
        raise DataError(
            f"{what}: missing file {str(path)!r}; expected {expected}. {how_to}", path
        )
    return path


# --------------------------------------------------------------------------- pickles


def _numpy_module(module: str) -> str:
    # Pickles written by numpy 1.x name numpy.core.*; numpy 2 moved it to numpy._core.
    if module.startswith("numpy.core") and hasattr(np, "_core"):
        return "numpy._core" + module[len("numpy.core"):]
    return module


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays.

    The CIFAR files are pickles; a restricted unpickler keeps a tampered file
    from running arbitrary code.
    """

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(_numpy_module(module), name)


def load_pickle(path: Path, *, what: str, expected: str, how_to: str) -> dict:
    """Load a CIFAR-style pickle (a dict), turning every failure into :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{what}: cannot read {str(path)!r}: {e}. {how_to}", path) from e
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, MemoryError, ...
        raise DataError(
            f"{what}: {str(path)!r} is not a readable pickle ({type(e).__name__}: {e}); "
            f"the file may be truncated or not in the official format. Expected {expected}. {how_to}",
            path,
        ) from e
    if not isinstance(obj, dict):
        raise DataError(
            f"{what}: {str(path)!r} holds a {type(obj).__name__}, expected a dict: {expected}. {how_to}",
            path,
        )
    return obj


def pickle_get(d: dict, key: str, path: Path, *, what: str, expected: str, how_to: str):
    """``d[b'key']`` (official files use bytes keys; str keys are accepted too)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    have = ", ".join(repr(k) for k in list(d)[:10])
    raise DataError(
        f"{what}: {str(path)!r} has no key b'{key}' (keys: {have}); expected {expected}. {how_to}",
        path,
    )


def decode_names(names, path: Path, *, what: str, how_to: str) -> list[str]:
    try:
        return [n.decode("utf-8") if isinstance(n, (bytes, bytearray)) else str(n) for n in names]
    except Exception as e:
        raise DataError(f"{what}: cannot read class names from {str(path)!r}: {e}. {how_to}", path) from e


def check_labels(labels: np.ndarray, num_classes: int, path, *, what: str, how_to: str) -> torch.Tensor:
    """Validate integer labels in ``[0, num_classes)`` and return them as an int64 tensor."""
    arr = np.asarray(labels)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{what}: labels in {str(path)!r} are not integers (dtype {arr.dtype}). {how_to}", path)
    arr = arr.astype(np.int64, copy=False).reshape(-1)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            bad = arr[(arr < 0) | (arr >= num_classes)][0]
            raise DataError(
                f"{what}: label {int(bad)} in {str(path)!r} is out of range "
                f"[0, {num_classes}) (labels span [{lo}, {hi}]). {how_to}",
                path,
            )
    return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- images


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted, hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _resize(img, size: int, mode: str):
    from PIL import Image

    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    if mode == "center_crop":
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    raise ValueError(f"resize must be 'stretch' or 'center_crop', got {mode!r}")


def _decode_one(path: Path, size: int, pil_mode: str, resize: str | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if resize is not None and im.format == "JPEG":
            im.draft(pil_mode, (size, size))  # cheap DCT-domain downscale of big JPEGs
        if im.mode in ("P", "PA") and "transparency" in im.info:
            im = im.convert("RGBA")
        im = im.convert(pil_mode)
    if im.size != (size, size):
        if resize is None:
            raise ValueError(f"image is {im.size[0]}x{im.size[1]}, expected {size}x{size}")
        im = _resize(im, size, resize)
    return np.asarray(im)


def decode_images(
    paths: Sequence[Path],
    *,
    size: int,
    channels: int,
    resize: str | None,
    what: str,
    expected: str,
    how_to: str,
    desc: str = "decoding images",
    progress: bool | None = None,
    num_workers: int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Decode image files into one uint8 tensor ``(N, channels, size, size)``.

    ``resize=None`` requires every image to be exactly ``size`` x ``size``;
    ``'stretch'`` or ``'center_crop'`` resizes with Pillow. Decoding runs in a
    small thread pool (Pillow releases the GIL while decoding); a tqdm bar is
    shown for big folders unless ``progress=False``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    pil_mode = "RGB" if channels == 3 else "L"
    n = len(paths)
    out = np.empty((n, channels, size, size), dtype=np.uint8)

    def work(start: int) -> int:
        stop = min(start + chunk, n)
        for i in range(start, stop):
            p = paths[i]
            try:
                arr = _decode_one(p, size, pil_mode, resize)
            except Exception as e:  # OSError, UnidentifiedImageError, DecompressionBombError, ...
                raise DataError(
                    f"{what}: cannot read image {str(p)!r} ({type(e).__name__}: {e}); expected {expected}. {how_to}",
                    p,
                ) from e
            if channels == 3:
                out[i] = arr.transpose(2, 0, 1)
            else:
                out[i, 0] = arr
        return stop - start

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if progress is None:
        progress = n >= 5000
    starts = range(0, n, chunk)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img", leave=False)
    try:
        if num_workers <= 1 or n <= chunk:
            for s in starts:
                done = work(s)
                if bar is not None:
                    bar.update(done)
        else:
            ex = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="kdforge-decode")
            try:
                for done in ex.map(work, starts):
                    if bar is not None:
                        bar.update(done)
            finally:  # on the first unreadable file, skip the chunks not yet started
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- statistics


def mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images ``(N, C, H, W)`` in ``[0, 1]`` units."""
    if images.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty set of images")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        ss += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    var = (ss / count - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-3)  # a constant channel would otherwise divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())
