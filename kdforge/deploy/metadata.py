"""The metadata of an exported model: what its input must be, its classes, and where it came from.

Every export has a JSON file next to it, named by appending ``.json`` to the export's file
name (``resnet8.onnx`` -> ``resnet8.onnx.json``), so the exports of one model in every format
can share a folder. `preprocessing` is the part that `kdforge predict` needs; it comes from a
checkpoint's ``data`` entry, so a training checkpoint serves as well.
"""

from __future__ import annotations

import json
import math
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


def loaded_which(ckpt: dict) -> str | None:
    """Which checkpoint `ckpt` (from `load_checkpoint`) really is: ``last`` or ``best``, or None if unknown.

    A run's ``checkpoints/last.pt`` or ``checkpoints/best.pt`` by its file name (a run folder asked
    for ``best`` that has no best.pt loads last.pt); an export by the ``which`` it was exported
    from (its ``exported_from``); any other file: None.
    """
    file = Path(ckpt["path"])
    if file.parent.name == "checkpoints" and file.stem in ("last", "best"):
        return file.stem
    exported = ckpt.get("exported_from")
    which = exported.get("which") if isinstance(exported, dict) else None
    return which if which in ("last", "best") else None


def accuracy(ckpt: dict, subnet: str | None = None, full_name: str | None = None,
             which: str | None = None) -> dict[str, Any] | None:
    """{top1, which, split, dataset}: the evaluation recorded with the checkpoint's weights, or None.

    The top-1 is the last evaluation in the checkpoint's history (the run's ``top1_last`` for
    last.pt, its best for best.pt); for a sub-net of a depth-dynamic net, that path's own head
    (`path_top1`). None when the checkpoint was saved inside an epoch (its weights were not
    evaluated). `which`: the checkpoint that was loaded (see `loaded_which`).
    """
    state = ckpt.get("state") or {}
    history = state.get("history") or []
    if not history or state.get("epoch_partial") is not None:
        return None
    top1 = path_top1(history[-1], subnet, full_name)
    if top1 is None:
        return None
    return {"top1": top1, "which": which, "split": _evaluated_split(ckpt),
            "dataset": (ckpt.get("data") or {}).get("name")}


def path_top1(record: dict[str, Any], subnet: str | None, full_name: str | None) -> float | None:
    """The top-1 of one history record for `subnet` (None or the full net's name: the net's own ``eval_top1``).

    A depth-dynamic net's other paths are heads, logged as ``eval_top1/<method>/<path>``.
    """
    if subnet is None or subnet == full_name:
        return record.get("eval_top1")
    return next((value for key, value in record.items()
                 if key.startswith("eval_top1/") and key.rsplit("/", 1)[-1] == subnet), None)


def subnet_state(state: dict[str, Any] | None, subnet: str, full_name: str | None) -> dict[str, Any] | None:
    """A depth-dynamic run's training state as it reads for the plain model of path `subnet` alone.

    Every history record's ``eval_top1`` becomes that path's own top-1 (`path_top1`; dropped where
    the path was not evaluated), and the per-path heads (``eval_top1/...``) go. For a path other
    than the full net, the full net's other evaluation metrics (``eval_top5``, ``eval_loss``, ...)
    go too: they are not the path's. ``best_top1`` and ``best_epoch`` are recomputed as the path's
    best over the history (the first record with the highest top-1; ``-inf`` and 0, the trainer's
    "none yet", where the path was never evaluated), so the slim checkpoint never claims the full
    net's best. Re-exporting the slim checkpoint then reports the path's accuracy, not the full net's.
    """
    if state is None:
        return None
    own = subnet == full_name
    history = []
    for record in state.get("history") or []:
        top1 = path_top1(record, subnet, full_name)
        kept = {key: value for key, value in record.items()
                if not key.startswith("eval_top1") and (own or not key.startswith("eval_"))}
        history.append(kept if top1 is None else {**kept, "eval_top1": top1})
    evaluated = [record for record in history if record.get("eval_top1") is not None]
    best = max(evaluated, key=lambda record: record["eval_top1"], default=None)  # max keeps the first
    return {**state, "history": history,
            "best_top1": -math.inf if best is None else best["eval_top1"],
            "best_epoch": 0 if best is None else int(best.get("epoch", 0))}


def _evaluated_split(ckpt: dict) -> str | None:
    """The split the run's `eval_top1` was measured on (its few-shot hold-out where it had one; not the validation
    hold-out, which is logged as `val_top1`)."""
    from kdforge.config import config_from_dict

    try:
        return config_from_dict(ckpt.get("config") or {}).data.evaluated_split
    except (ValueError, TypeError):  # a config of an older kdforge: the split is unknown
        return None


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write `metadata` as indented JSON, atomically."""
    from kdforge.engine.checkpoint import atomic_write

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
