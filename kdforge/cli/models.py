"""`kdforge models [PATTERN]`: the model zoo with parameters and MACs."""

from __future__ import annotations

import argparse
import fnmatch

from kdforge.cli.args import positive_int
from kdforge.cli.text import table


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo with parameters and MACs",
                       description="List zoo models with their family, input size, parameters and multiply-"
                                   "accumulates (MACs) of one image's forward pass: every conv and linear "
                                   "layer, the usual convention (ResNet-18 at 224x224: 1.82 G). "
                                   "Give PATTERN (a glob, e.g. 'resnet*') to list some of them.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="glob over model names")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes for the counts (default: 100 for CIFAR models, 1000 for ImageNet)")
    p.add_argument("--in-channels", type=positive_int, default=3)
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="image side for the MACs (default: each model's own, 32 or 224)")
    p.add_argument("--no-macs", dest="macs", action="store_false", help="parameters only (faster)")
    p.add_argument("--macs", action="store_true", help=argparse.SUPPRESS)  # MACs are shown by default now
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.errors import ConfigError
    from kdforge.models import build_model, model_info, model_names
    from kdforge.models.complexity import count_macs, count_parameters, format_macs

    names = [name for name in model_names() if fnmatch.fnmatchcase(name, args.pattern)]
    if not names:
        raise ConfigError(f"no zoo model matches {args.pattern!r}; `kdforge models` lists them all")
    rows = []
    for name in names:
        info = model_info(name)
        classes = args.num_classes or (1000 if info.input_size >= 224 else 100)
        size = args.input_size or info.input_size
        model = build_model(name, num_classes=classes, in_channels=args.in_channels)
        row = [name, info.family, f"{size}x{size}", str(classes),
               f"{count_parameters(model):,}", f"{count_parameters(model) / 1e6:.2f} M"]
        if args.macs:
            try:
                row.append(format_macs(count_macs(model, size, args.in_channels)))
            except RuntimeError as exc:  # e.g. an input too small for the network's pooling
                raise ConfigError(f"--input-size {size}: {name} cannot take a {size}x{size} image "
                                  f"({str(exc).splitlines()[0]})") from None
        rows.append(row)
    headers = ["model", "family", "input", "classes", "params", "(M)"] + (["MACs"] if args.macs else [])
    print(table(headers, rows, align_right={3, 4, 5, 6}))
    return 0
