"""`kdforge eval RUN_OR_CHECKPOINT`: accuracy of a trained model on a dataset split."""

from __future__ import annotations

from kdforge.cli.args import positive_int

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run folder or checkpoint (top-1, top-5, loss)",
        description="Evaluate the model in a run folder (its best checkpoint) or a .pt file on the "
                    "dataset it was trained on, or on another one given by --data/--root.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--which", choices=["best", "last"], default="best", help="checkpoint of a run folder")
    p.add_argument("--data", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--root", help="dataset folder (default: the training run's)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.data import TensorLoader, load_dataset
    from kdforge.engine import evaluate, load_model
    from kdforge.engine.precision import resolve_device, resolve_precision
    from kdforge.errors import CheckpointError

    model, ckpt = load_model(args.checkpoint, args.which)
    data_cfg = ckpt["config"]["data"]
    name = args.data or data_cfg["name"]
    same_data = name == data_cfg["name"]
    root = args.root or (data_cfg.get("root") if same_data else None)
    split = args.split or data_cfg.get("eval_split") or "test"
    options = data_cfg.get("options", {}) if same_data else {}
    data = load_dataset(name, root, split, **options)
    record = ckpt["model"]
    if (record["num_classes"], record["in_channels"]) != (data.num_classes, data.in_channels):
        raise CheckpointError(
            f"{ckpt['path']} is a {record['name']} for {record['num_classes']} classes and "
            f"{record['in_channels']} input channels; {name}/{split} has {data.num_classes} classes and "
            f"{data.in_channels} channels")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, None, device)
    model.to(device=device, memory_format=precision.memory_format())
    loader = TensorLoader(data, args.batch_size, shuffle=False, drop_last=False, device=device,
                          augment=None, seed=0, channels_last=precision.channels_last)
    metrics = evaluate(model, loader, precision)
    metrics.update(checkpoint=ckpt["path"], model=ckpt["model"]["name"], dataset=name, split=split)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['model']} on {name}/{split} ({metrics['n']} images): "
              f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"
              f"  [{ckpt['path']}]")
    return 0
