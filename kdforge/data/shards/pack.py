"""`kdforge pack`: an image folder's split written as tar shards in WebDataset's format, plus an index.

Each sample is `<key>.<ext>` (the image file's bytes, unchanged) and `<key>.cls` (its label, as text); keys are
the sample's position (`000000123`). The samples are shuffled (seeded) before they are cut into shards of
`shard_size`: a shard then holds every class, as a batch read from one shard must. The index
`<split>.index.json` records the classes and where each image's bytes lie in its shard, so a reader seeks
instead of scanning; shards without it (written by other tools) are scanned once (`reader.py`).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import tarfile
from pathlib import Path

from ..datasets.imagefolder import scan_split
from ..errors import DataError
from ..streaming.dataset import forget_file

INDEX_FORMAT = "kdforge-shards/1"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def index_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}.index.json"


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add `data` as member `name`; where its bytes start in the tar file (after its header)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # reproducible bytes: no times or owners
    start = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return start


def pack_split(root, out, split: str, *, shard_size: int = 1000, seed: int = 0, classes: list[str] | None = None,
               progress: bool = True) -> dict:
    """Write `root/<split>/<class>/*` into `out/<split>-NNNNNN.tar`; returns the index (also written).

    Classes are `classes` or the sorted folders of `root/train` when it exists (every split the same labels).
    A shard is written under a temporary name and renamed when complete, the index last."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"pack: --shard-size must be a positive integer, got {shard_size!r}")
    root, out = Path(root), Path(out)
    if classes is None:  # the folder's classes, as training on it would see them
        from ..streaming.folders import scan_folder

        classes, paths, labels = scan_folder(root, split, "pack")
    else:
        classes, paths, labels = scan_split(root / split, classes, what="pack", require_all=False,
                                            how_to="Arrange the images as root/<split>/<class>/<image>.")
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=f"pack {split}", unit="img")
    for number, start in enumerate(range(0, len(order), shard_size)):
        name = shard_name(split, number)
        staging = out / f".{name}.partial"
        samples = []  # [offset, size, label] of each image, as the index records them
        with tarfile.open(staging, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key_number in order[start:start + shard_size]:
                key = f"{key_number:09d}"
                path = paths[key_number]
                ext = path.suffix.lower().lstrip(".") or "jpg"
                image = path.read_bytes()
                offset = _member(tar, f"{key}.{'jpg' if ext == 'jpeg' else ext}", image)
                _member(tar, f"{key}.cls", str(labels[key_number]).encode())
                samples.append([offset, len(image), labels[key_number]])
                if bar is not None:
                    bar.update(1)
        os.replace(staging, out / name)
        forget_file(str(out / name))  # a descriptor this process keeps of an earlier file of that name
        shards.append({"file": name, "samples": samples})
    if bar is not None:
        bar.close()
    written = {shard["file"] for shard in shards}
    ours = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar")  # this split's names only (not train-small-*)
    for stale in out.iterdir():  # an earlier pack's extra shards would read as more images
        if ours.fullmatch(stale.name) and stale.name not in written:
            stale.unlink()
    index = {"format": INDEX_FORMAT, "split": split, "classes": classes, "images": len(paths),
             "shard_size": shard_size, "seed": seed, "source": str(root.resolve() / split), "shards": shards}
    staging = index_path(out, split).with_suffix(".partial")
    staging.write_text(json.dumps(index) + "\n")
    os.replace(staging, index_path(out, split))
    return index
