"""Accuracy of a saved model (run folder or .pt) on a dataset split: what `kdforge eval` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.errors import CheckpointError


def evaluate_checkpoint(source: str | Path, which: str = "last", *, data: str | None = None,
                        root: str | None = None, split: str | None = None, batch_size: int = 256,
                        device: str = "auto", precision: str = "fp32") -> dict[str, Any]:
    """{top1, top5, loss, n, checkpoint, model, dataset, split} of the model in `source`.

    The dataset defaults to the one the model was trained on (its root and options too), the
    split to the run's `data.eval_split` (the test split unless changed; a few-shot hold-out is
    never used here).
    """
    from kdforge.data import load_dataset
    from kdforge.data.batches import make_loader
    from kdforge.data.streaming.folders import saved_streamed_split
    from kdforge.engine.checkpoint import load_model
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.precision import resolve_device, resolve_precision

    model, ckpt = load_model(source, which)
    data_cfg = (ckpt.get("config") or {}).get("data") or {}
    name = data or data_cfg.get("name")
    if not name:
        raise CheckpointError(f"{ckpt['path']} does not say which dataset it was trained on: give the dataset name")
    same_data = name == data_cfg.get("name")
    root = root or (data_cfg.get("root") if same_data else None)
    split = split or data_cfg.get("eval_split") or "test"
    dataset = saved_streamed_split(data_cfg, root, split) if same_data else None
    if dataset is None:
        dataset = load_dataset(name, root, split, **(data_cfg.get("options", {}) if same_data else {}))
    record = ckpt["model"]
    if (record["num_classes"], record["in_channels"]) != (dataset.num_classes, dataset.in_channels):
        raise CheckpointError(
            f"{ckpt['path']} is a {record['name']} for {record['num_classes']} classes and "
            f"{record['in_channels']} input channels; {name}/{split} has {dataset.num_classes} classes and "
            f"{dataset.in_channels} channels")
    dev = resolve_device(device)
    prec = resolve_precision(precision, None, dev)
    model.to(device=dev, memory_format=prec.memory_format())
    loader = make_loader(dataset, batch_size, shuffle=False, drop_last=False, device=dev, seed=0,
                         channels_last=prec.channels_last, workers=int(data_cfg.get("workers", 4)))
    metrics = evaluate(model, loader, prec)
    metrics.update(checkpoint=ckpt["path"], model=record["name"], dataset=name, split=split)
    return metrics

