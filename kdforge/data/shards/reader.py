"""`data.name: webdataset`: tar shards (WebDataset's `<key>.<image ext>` + `<key>.cls` layout) as a streamed dataset.

Each epoch the shards are permuted (seeded by seed and epoch), rank `r` of `W` takes every W-th of them, and the
samples inside each of its shards are shuffled (seeded by the shard too): processes on different machines read
disjoint shards. Every rank trains on the same number of samples, ceil(images / W), cutting or repeating its
own (with shards of equal size the difference is at most a shard's last samples). The order depends only on
(seed, epoch), so resume and worker counts behave as for image folders (`data/streaming/`).
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import torch

from .._io import default_root
from ..errors import DataError
from ..loader import derive_seed
from ..streaming.dataset import StreamingImageDataset
from .pack import INDEX_FORMAT, index_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..003}.tar` -> a-000.tar ... a-003.tar (WebDataset's numeric range form; one range per pattern)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first)
    return [pattern[:match.start()] + f"{n:0{width}d}" + pattern[match.end():]
            for n in range(int(first), int(last) + 1)]


def scan_shard(path: Path) -> list[tuple[str, int, int, int]]:
    """(key, image offset, image size, label) of every sample in a tar shard, in member order."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext.lower() in IMAGE_EXTS:
                    images[key] = (member.offset_data, member.size)
                elif ext == "cls":
                    labels[key] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DataError(f"webdataset: shard {path} cannot be read ({exc})", path) from None
    missing = [k for k in images if k not in labels]
    if missing:
        raise DataError(f"webdataset: sample {missing[0]!r} of {path} has an image but no .cls label", path)
    return [(key, offset, size, labels[key]) for key, (offset, size) in images.items()]


class ShardedImageDataset(StreamingImageDataset):
    """A streamed dataset whose images lie in tar shards; the epoch order gives each rank whole shards."""

    def rank_order(self, seed, epoch, rank, world_size, shuffle, num_samples):
        files, ids = self.locations.files, self.locations.file_ids
        grouped = np.split(np.argsort(ids, kind="stable"), np.cumsum(np.bincount(ids, minlength=len(files)))[:-1])
        by_shard = {files[k]: members for k, members in enumerate(grouped) if len(members)}
        shards = list(by_shard)
        if len(shards) < world_size:
            raise DataError(f"webdataset: {len(shards)} shard(s) for {world_size} processes: every process needs "
                            f"its own shards; pack with a smaller --shard-size", Path(shards[0]))
        if shuffle:
            g = torch.Generator().manual_seed(derive_seed("shards", seed, epoch))
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        parts = []
        for shard in shards[rank::world_size]:
            members = torch.from_numpy(by_shard[shard])
            if shuffle:
                g = torch.Generator().manual_seed(derive_seed("in-shard", seed, epoch, Path(shard).name))
                members = members[torch.randperm(len(members), generator=g)]
            parts.append(members)
        order = torch.cat(parts)
        if len(order) < num_samples:  # as many samples as every other rank: repeat this rank's own
            order = order.repeat(-(-num_samples // len(order)))
        return order[:num_samples]


def _read_index(index_file: Path) -> tuple[list[str], dict[str, list]]:
    """(classes, {shard file name: [[offset, size, label], ...]}) of a `kdforge pack` index."""
    try:
        index = json.loads(index_file.read_text())
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"its format is {index.get('format')!r}, not {INDEX_FORMAT!r}")
        return list(index["classes"]), {s["file"]: s["samples"] for s in index["shards"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"webdataset: {index_file} is not a readable kdforge shard index ({exc}); pack the split "
                        f"again or delete the index to scan the shards", index_file) from None


def shard_files(root, split: str, pattern: str | None) -> list[Path]:
    base = default_root(root)
    if pattern:
        names = [n for p in expand_braces(pattern) for n in (sorted(glob.glob(str(base / p))) or [str(base / p)])]
    else:
        names = sorted(glob.glob(str(base / f"{split}-*.tar")))
    files = [Path(n) for n in names]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        where = missing[0] if missing else base / (pattern or f"{split}-*.tar")
        raise DataError(f"webdataset: no shard {where} (write shards with `kdforge pack ROOT {base} --split "
                        f"{split}`, or give data.options.shards)", where)
    return files


def open_shards(root, split: str, *, patterns: dict[str, str] | None, train: bool, hflip: bool, size: int,
                eval_resize: int, channels: int) -> ShardedImageDataset:
    """Split `split` of the shards in folder `root` (`<split>-*.tar`, or `patterns[split]` such as
    'train-{000000..000127}.tar') as a `ShardedImageDataset`."""
    if patterns is not None and not isinstance(patterns, dict):
        raise DataError(f"data.options.shards: a mapping of split to pattern, e.g. {{train: 'train-{{000000..000099}}"
                        f".tar'}}, got {patterns!r}")
    pattern = (patterns or {}).get(split)
    base = default_root(root)
    classes, listed = None, {}
    if pattern is None and index_path(base, split).is_file():  # exactly the index's shards (not stale ones)
        classes, listed = _read_index(index_path(base, split))
        files = [base / name for name in listed]
        if not files:
            raise DataError(f"webdataset: {index_path(base, split)} lists no shards: pack the split again",
                            index_path(base, split))
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"webdataset: shard {missing[0]} listed in {index_path(base, split)} is missing: pack "
                            f"the split again", missing[0])
    else:
        files = shard_files(root, split, pattern)
        index_file = index_path(files[0].parent, split)  # an index beside the named shards lists their offsets
        if index_file.is_file():
            classes, listed = _read_index(index_file)
    samples: list[tuple[str, int, int, int]] = []
    home = files[0].parent
    for f in files:  # where the index beside it lists a shard, its offsets; else the shard's own headers
        entry = listed.get(f.name) if f.parent == home else None
        found = entry or [(offset, n, label) for _, offset, n, label in scan_shard(f)]
        samples += [(str(f), offset, n, label) for offset, n, label in found]
    labels = [label for *_, label in samples]
    if classes is None:
        classes = [str(k) for k in range(max(labels) + 1)] if labels else []
    if not samples:
        raise DataError(f"webdataset: the shards of {split} hold no images", files[0])
    locations = [(file, offset, n) for file, offset, n, _ in samples]
    names = [f"{file}@{offset}" for file, offset, _ in locations]
    return ShardedImageDataset(names, torch.tensor(labels, dtype=torch.int64), classes, (0.0,) * channels,
                               (1.0,) * channels, f"webdataset:{home.name}", size, eval_resize,
                               channels, train, hflip, str(home), locations)
