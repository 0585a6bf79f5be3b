"""Classify image files with an exported student, in any format, or a run's checkpoint (`kdforge predict`).

Images are prepared as training prepared them: decoded by Pillow, converted to grey or RGB,
resized to the model's input size the way the ``imagefolder`` data set resizes (an image of
that size is left as it is), scaled to [0, 1] and normalised with the training data's mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdforge.deploy.formats import Runner, as_runner, embedded_metadata, is_torchscript, load_runner
from kdforge.deploy.metadata import (check_input, metadata_path, parse_metadata, preprocessing,
                                            read_metadata)
from kdforge.errors import CheckpointError, ConfigError

#: one image's prediction: (file, [(class index, class name, probability)], most probable first)
Prediction = tuple[str, list[tuple[int, str, float]]]


@dataclass
class DeployedModel:
    """A model ready to classify: `run` maps a prepared batch to logits, `metadata` says how to prepare it."""

    run: Runner
    metadata: dict[str, Any]
    path: Path
    format: str


def load_deployed(source: str | Path) -> DeployedModel:
    """An exported file (.pt, .torchscript.pt, .onnx with FILE.json next to it), a run folder or a checkpoint.

    The metadata comes from FILE.json; without one, from a kdforge checkpoint's data settings
    (a run folder: its last.pt) or the JSON embedded in a TorchScript file.
    """
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"model {path} does not exist (give an exported model file, a checkpoint or a run folder)")
    sidecar = metadata_path(path)
    metadata = read_metadata(sidecar, path) if path.is_file() and sidecar.is_file() else None
    fmt = metadata["format"] if metadata else _guess_format(path)
    where = sidecar if metadata else path
    if fmt == "state_dict":
        from kdforge.engine.checkpoint import load_model

        model, ckpt = load_model(path, "last")
        run = as_runner(model)
        if metadata is None:
            metadata, where = preprocessing(ckpt), ckpt["path"]
    else:
        if metadata is None and fmt == "torchscript" and (text := embedded_metadata(path)):
            metadata = parse_metadata(text, path)
        if metadata is None:
            raise ConfigError(f"{path} has no metadata: expected {sidecar}, which `kdforge export` writes next to "
                              f"the model (it holds the classes and the input normalisation)")
        run = load_runner(path, fmt)[0]
    check_input(metadata, where)
    return DeployedModel(run, metadata, path, fmt)


def _guess_format(path: Path) -> str:
    if path.is_file() and is_torchscript(path):
        return "torchscript"
    return "onnx" if path.suffix.lower() == ".onnx" else "state_dict"


def image_files(source: str | Path) -> tuple[list[Path], int]:
    """([the image], 0) for a file; for a folder (its image files, sorted; how many other files were skipped)."""
    path = Path(source)
    if path.is_file():
        return [path], 0
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist (give an image file or a folder of images)")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    suffixes = _image_suffixes()
    images = [p for p in files if p.suffix.lower() in suffixes]
    if not images:
        raise ConfigError(f"folder {path} has no image files (PNG, JPEG or another format Pillow opens; "
                          f"{len(files)} other file{'' if len(files) == 1 else 's'})")
    return images, len(files) - len(images)


def _image_suffixes() -> set[str]:
    """The file suffixes of the formats Pillow can open."""
    from PIL import Image

    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def load_images(paths: list[Path], metadata: dict[str, Any]) -> torch.Tensor:
    """The images at `paths` as one normalised float32 batch, prepared as in training."""
    from kdforge.data import normalize
    from kdforge.data._io import decode_images

    images = decode_images(paths, size=metadata["image_size"], channels=metadata["in_channels"],
                           resize=metadata.get("resize") or "stretch", what="images",
                           expected="an image file that Pillow can read (PNG, JPEG, ...)",
                           how_to="Remove or replace the file.", progress=False, num_workers=1)
    norm = metadata["normalization"]
    return normalize(images, norm["mean"], norm["std"])


def predict(model: DeployedModel, paths: list[Path], top: int = 5, batch_size: int = 64) -> list[Prediction]:
    """The `top` most probable classes of each image (at most all of them), in batches of `batch_size`."""
    if top < 1 or batch_size < 1:
        raise ConfigError(f"--top and --batch-size must be at least 1, got {top} and {batch_size}")
    classes = model.metadata["classes"]
    k = min(top, len(classes))
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        logits = model.run(load_images(chunk, model.metadata))
        if logits.shape[-1] != len(classes):
            raise CheckpointError(f"{model.path} gives {logits.shape[-1]} logits, but its metadata names "
                                  f"{len(classes)} classes")
        probs, indices = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
        for path, p, ix in zip(chunk, probs.tolist(), indices.tolist()):
            results.append((str(path), [(i, classes[i], q) for i, q in zip(ix, p)]))
    return results
