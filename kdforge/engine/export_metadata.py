"""The metadata of an exported model: what its input must be, its classes, and where it came from.

Every export has a JSON file next to it, named by appending ``.json`` to the export's file
name (``resnet8.onnx`` -> ``resnet8.onnx.json``), so the exports of one model in every format
can share a folder. `preprocessing` is the part that `kdforge predict` needs; it comes from a
checkpoint's ``data`` entry, so a training checkpoint serves as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError

VERSION = 1


def metadata_path(export_file: str | Path) -> Path:
    """The metadata file of `export_file`: its name with ``.json`` appended."""
    export_file = Path(export_file)
    return export_file.with_name(export_file.name + ".json")


def preprocessing(ckpt: dict) -> dict[str, Any]:
    """{classes, in_channels, image_size, resize, normalization, input} of a checkpoint (None where unknown)."""
    data = ckpt.get("data") or {}
    options = ((ckpt.get("config") or {}).get("data") or {}).get("options") or {}
    channels = data.get("in_channels") or (ckpt.get("model") or {}).get("in_channels")
    size, resize = data.get("image_size"), options.get("resize", "stretch")
    known = data.get("mean") is not None and data.get("std") is not None
    colour = {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")
    return {
        "classes": None if data.get("classes") is None else [str(name) for name in data["classes"]],
        "in_channels": None if channels is None else int(channels),
        "image_size": None if size is None else int(size),
        "resize": resize,
        "normalization": {"mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]],
                          "pixel_scale": 255} if known else None,
        "input": f"float32 tensor (N, {channels}, {size}, {size}): {colour} images resized to {size}x{size} "
                 f"({resize}), pixel values x / 255, then (x - mean) / std per channel"
                 if known and channels and size else None,
    }


def check_input(metadata: dict[str, Any], where: str | Path) -> None:
    """A ConfigError naming `where` unless `metadata` says how to prepare images (classes, size, mean/std)."""
    missing = [key for key in ("classes", "in_channels", "image_size", "normalization") if not metadata.get(key)]
    if missing:
        raise ConfigError(f"{where} does not say how to prepare the images ({', '.join(missing)} unknown); "
                          f"export the model from a kdforge run")


def accuracy(ckpt: dict, subnet: str | None = None, full_name: str | None = None,
             which: str = "last") -> dict[str, Any] | None:
    """{top1, which, split, dataset}: the evaluation recorded with the checkpoint's weights, or None.

    The top-1 is the last evaluation in the checkpoint's history (the run's ``top1_last`` for
    last.pt, its best for best.pt); for a sub-net of a depth-dynamic net, that path's own head.
    None when the checkpoint was saved inside an epoch (its weights were not evaluated).
    """
    state = ckpt.get("state") or {}
    history = state.get("history") or []
    if not history or state.get("epoch_partial") is not None:
        return None
    record = history[-1]
    if subnet is None or subnet == full_name:
        top1 = record.get("eval_top1")
    else:  # the heads are logged as eval_top1/<method>/<path>
        top1 = next((value for key, value in record.items()
                     if key.startswith("eval_top1/") and key.rsplit("/", 1)[-1] == subnet), None)
    if top1 is None:
        return None
    return {"top1": top1, "which": which, "split": _selection_split(ckpt),
            "dataset": (ckpt.get("data") or {}).get("name")}


def _selection_split(ckpt: dict) -> str | None:
    """The split the run evaluated on (its few-shot hold-out where it had one)."""
    from kdforge.config import config_from_dict

    try:
        return config_from_dict(ckpt.get("config") or {}).data.selection_split
    except (ValueError, TypeError):  # a config of an older kdforge: the split is unknown
        return None


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write `metadata` as indented JSON, atomically."""
    from kdforge.engine.export_formats import atomic_write

    text = json.dumps(metadata, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_metadata(path: Path, model_file: str | Path) -> dict[str, Any]:
    """The metadata JSON at `path` (of `model_file`); a ConfigError naming it if it is unreadable."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"metadata {path} of {model_file} cannot be read: {exc}") from None
    return parse_metadata(text, path)


def parse_metadata(text: str, where: str | Path) -> dict[str, Any]:
    """The metadata in the JSON `text` (from `where`: a file, or the TorchScript file that embeds it)."""
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the metadata in {where} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("kdforge_export") != VERSION:
        raise ConfigError(f"{where} is not kdforge export metadata (no \"kdforge_export\": {VERSION})")
    return metadata
