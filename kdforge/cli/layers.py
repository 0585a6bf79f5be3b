"""`kdforge layers MODEL`: a model's module names that can be tapped, with output shapes."""

from __future__ import annotations

import fnmatch

from kdforge.cli.args import positive_int
from kdforge.cli.text import table


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="list a model's module names that can be tapped, with output shapes",
                       description="Run one dummy image through MODEL and list every module name with its "
                                   "type and output shape. Use these names for methods' layers; add "
                                   "':input' to a name to tap the module's input instead.")
    p.add_argument("model", help="a zoo name (`kdforge models`) or an import spec, 'package.module:factory' or "
                                 "'path/to/file.py:factory' (its stages are then inferred by a dry run)")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="image size (default: the model's own; 224 for an import spec)")
    p.add_argument("--kwargs", type=json_mapping, default={},
                   help="an import spec's keyword arguments as JSON, e.g. '{\"model_name\": \"resnet18\"}'")
    p.add_argument("--filter", default="*", help="glob over module names, e.g. 'layer*.?' for blocks")
    p.add_argument("--all", action="store_true",
                   help="list every module (default: skip BatchNorm/activation leaves)")
    p.set_defaults(func=run)


def json_mapping(text: str) -> dict:
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def run(args) -> int:
    import torch

    from kdforge.features import layer_shapes
    from kdforge.models import build_model, model_info

    if ":" in args.model:
        from kdforge.models.imported import build_imported

        size = args.input_size or 224
        model = build_imported(args.model, args.kwargs, num_classes=args.num_classes, in_channels=args.in_channels,
                               image_size=size, where=args.model)
    else:
        model = build_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels)
        size = args.input_size or model_info(args.model).input_size
    example = torch.zeros(1, args.in_channels, size, size)
    stages = set(getattr(model, "stage_names", []))
    blocks = set(getattr(model, "block_names", []))
    classifier = getattr(model, "classifier_name", None)
    skip = () if args.all else ("BatchNorm", "ReLU", "ReLU6", "Identity", "Dropout", "Flatten")
    rows = []
    for name, kind, shape in layer_shapes(model, example):
        if not fnmatch.fnmatchcase(name, args.filter) or kind.startswith(skip) and name not in stages | blocks:
            continue
        role = "stage end" if name in stages else "block" if name in blocks else \
            "classifier" if name == classifier else ""
        rows.append([name, kind, "x".join(map(str, shape)), role])
    print(f"{args.model} at {args.in_channels}x{size}x{size}:")
    print(table(["module", "type", "output shape", "role"], rows))
    if getattr(model, "inferred_taps", False):
        print("\nstages, blocks and classifier inferred by a dry run (the last module at each resolution; "
              "docs/models.md): give methods' layers by name where these are not the ones you want")
    layout = getattr(model, "token_layout", None)
    if layout is not None:
        h, w = layout.grid
        print(f"\na token model (vision transformer): {layout.prefix} class/distillation token(s), then {h}x{w} patch "
              f"tokens; feature methods get a block's output as a map of its patch tokens, (N, D, {h}, {w}); "
              f"stages: three blocks at a third, two thirds and the whole depth")
    if classifier:
        print(f"\nembedding (classifier input): '{classifier}:input'")
    if any(name.endswith(".out_relu") for name, _ in model.named_modules()):
        print("pre-activation block output: '<block>.out_relu:input' (out_relu modules are listed with --all)")
    return 0
