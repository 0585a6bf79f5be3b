"""`kdforge eval FILE.onnx` (or a TorchScript file): an exported model's top-1 on a data set, run as deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError


def is_deployed_file(path: str | Path) -> bool:
    """An ONNX or TorchScript export (not a kdforge checkpoint or run folder)."""
    from kdforge.deploy.formats import is_torchscript

    path = Path(path)
    return path.is_file() and (path.suffix.lower() == ".onnx" or is_torchscript(path))


def evaluate_file(path: str | Path, *, data: str | None = None, root: str | None = None, split: str | None = None,
                  batch_size: int = 256) -> dict[str, Any]:
    """{top1, top5, n, checkpoint, model, dataset, split} of the exported file at `path` on `split` (default the
    source run's eval split) of `data` (default the source run's data set), prepared as its metadata says."""
    from kdforge.data import load_dataset, normalize
    from kdforge.deploy.predict import load_deployed
    from kdforge.engine.checkpoint import load_checkpoint
    from kdforge.errors import CheckpointError

    deployed = load_deployed(path)
    meta = deployed.metadata
    source_data: dict[str, Any] = {}
    try:
        source_data = (load_checkpoint((meta.get("source") or {}).get("checkpoint") or "", "last").get("config")
                       or {}).get("data") or {}
    except (CheckpointError, OSError, TypeError):
        pass  # the source checkpoint is not here: --data says which data set
    name = data or source_data.get("name")
    if not name:
        raise ConfigError(f"{path}: its source checkpoint is not here to say which data set it was trained on: give "
                          f"--data (and --root)")
    same = name == source_data.get("name")
    split = split or (source_data.get("eval_split") if same else None) or "test"
    dataset = load_dataset(name, root or (source_data.get("root") if same else None), split,
                           **(source_data.get("options") or {} if same else {}))
    norm = meta["normalization"]
    correct1 = correct5 = 0
    for start in range(0, len(dataset), batch_size):
        images = normalize(dataset.images[start:start + batch_size], norm["mean"], norm["std"])
        labels = dataset.labels[start:start + batch_size]
        logits = deployed.run(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
    n = len(dataset)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n": n, "checkpoint": str(path),
            "model": meta.get("architecture"), "dataset": name, "split": split, "loss": float("nan"),
            "int8": bool(meta.get("int8"))}
