"""Accuracy of a saved model (run folder or .pt) on a dataset split: what `kdforge eval` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.errors import CheckpointError


def evaluate_checkpoint(source: str | Path, which: str = "last", *, model_name: str | None = None,
                        data: str | None = None, root: str | None = None, split: str | None = None,
                        batch_size: int = 256, device: str = "auto", precision: str = "fp32",
                        teacher: str | None = None) -> dict[str, Any]:
    """{top1, top5, loss, n, checkpoint, model, dataset, split} of the model in `source`; with `teacher` also
    'teacher': the student's fidelity to a teacher on the same images (`engine/fidelity.py`: top-1 agreement, KL,
    and the teacher's own top-1). `teacher` "" is the run's own (its config's `teacher` section), else a run
    folder (its last epoch) or a checkpoint file.

    The dataset defaults to the one the model was trained on (its root and options too), the
    split to the run's `data.eval_split` (the test split unless changed; a few-shot hold-out is
    never used here). A plain weight file (a RepDistiller/mdistiller teacher, a torchvision ResNet)
    needs the zoo model `model_name` and `data`; the top-1 it states is returned as `stated_top1`.
    """
    from kdforge.data import load_dataset
    from kdforge.data.batches import make_loader
    from kdforge.data.streaming.folders import saved_streamed_split
    from kdforge.engine.checkpoint import load_model, load_weights
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.precision import resolve_device, resolve_precision
    from kdforge.engine.weights_file import fit_to_model, is_kdforge_checkpoint, load_model_file

    if model_name is None:
        model, ckpt = load_model(source, which)
    else:
        ckpt = load_model_file(source, which)
        if is_kdforge_checkpoint(ckpt):
            raise CheckpointError(f"{ckpt['path']} is a kdforge checkpoint, which records its model: leave out "
                                  f"--model")
    data_cfg = (ckpt.get("config") or {}).get("data") or {}
    name = data or data_cfg.get("name")
    if not name:
        raise CheckpointError(f"{ckpt['path']} does not say which dataset it was trained on: give the dataset name "
                              f"(--data)")
    same_data = name == data_cfg.get("name")
    root = root or (data_cfg.get("root") if same_data else None)
    split = split or data_cfg.get("eval_split") or "test"
    dataset = saved_streamed_split(data_cfg, root, split) if same_data else None
    if dataset is None:
        dataset = load_dataset(name, root, split, **(data_cfg.get("options", {}) if same_data else {}))
    if model_name is not None:  # a plain weight file: the zoo model named, for this data set
        from kdforge.models import build_model

        model = build_model(model_name, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        load_weights(model, fit_to_model(model, ckpt["student"], ckpt["path"])[0], ckpt["path"])
        ckpt["model"] = {"name": model_name, "num_classes": dataset.num_classes,
                         "in_channels": dataset.in_channels}
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
    if teacher is not None:
        from kdforge.engine.fidelity import fidelity

        teacher_model, teacher_file = _teacher(ckpt, teacher, dataset)
        teacher_model.to(device=dev, memory_format=prec.memory_format())
        metrics["teacher"] = {"checkpoint": teacher_file, **fidelity(model, teacher_model, loader, prec)}
    if ckpt.get("stated_accuracy") is not None:
        metrics["stated_top1"] = ckpt["stated_accuracy"]
    return metrics


def _teacher(ckpt: dict[str, Any], teacher: str, dataset):
    """(the teacher model, its file) for `evaluate_checkpoint(teacher=...)`, for `dataset`'s classes."""
    from kdforge.config import ModelConfig, config_from_dict
    from kdforge.engine.run import build_zoo_model

    if teacher:
        section = ModelConfig(checkpoint=str(teacher))
    else:
        config = ckpt.get("config") or {}
        section = config_from_dict(config).teacher if config.get("teacher") else None
        if section is None or not section.checkpoint:
            raise CheckpointError(f"{ckpt['path']} was trained without a teacher: name one (--teacher RUN_OR_CHECKPOINT)")
    sources: dict[str, dict[str, Any]] = {}
    model = build_zoo_model(section, dataset.num_classes, dataset.in_channels, "teacher", sources,
                            getattr(dataset, "image_size", None))
    return model, sources.get("teacher", {}).get("file", section.checkpoint)
