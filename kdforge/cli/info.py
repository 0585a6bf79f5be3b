"""`kdforge models`, `kdforge methods [NAME]`, `kdforge layers MODEL`: what is available."""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import textwrap
from types import SimpleNamespace

from kdforge.cli.args import positive_int


def _table(headers: list[str], rows: list[list[str]], align_right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells):
        return "  ".join(str(c).rjust(w) if i in align_right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# ----------------------------------------------------------------------------- models
def _add_models(sub) -> None:
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
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
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
    print(_table(headers, rows, align_right={3, 4, 5, 6}))
    return 0


models_command = SimpleNamespace(add_parser=_add_models)


# ----------------------------------------------------------------------------- methods
def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list the distillation methods, or show one method's parameters",
                       description="List every method with its paper, the layers it taps and its defaults, "
                                   "fitted to the terminal's width (COLUMNS); with NAME, show that method's "
                                   "description, parameters and defaults in full and how to use it in a config.")
    p.add_argument("name", nargs="?", help="a method name")
    p.set_defaults(func=_run_methods)


def _terminal_width() -> int:
    """Columns of the terminal (or $COLUMNS); 80 when the output is not a terminal."""
    return max(shutil.get_terminal_size((80, 24)).columns, 20)


def _format_default(value) -> str:
    import inspect
    return "required" if value is inspect.Parameter.empty else repr(value)


def _is_required(param) -> bool:
    return _format_default(param.default) == "required"


def _yaml_value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _share(natural: dict[int, int], room: int) -> dict[int, int]:
    """Widths of the wrapping columns: `room` shared out, none wider than it needs (`natural`)."""
    widths, left = {}, room
    for k, i in enumerate(sorted(natural, key=natural.get)):
        widths[i] = min(natural[i], left // (len(natural) - k))
        left -= widths[i]
    return widths


def _fit_table(headers: list[str], rows: list[list[str]], width: int, wrap: tuple[str, ...],
               drop: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """`_table` no wider than `width`: the columns named in `wrap` share the room the others leave
    and wrap onto continuation lines; while one would get under 24 characters (and less than it
    needs), the columns in `drop` are left out, in that order. Returns (text, the dropped headers)."""
    keep, dropped = list(range(len(headers))), []
    while True:
        natural = {i: max(len(headers[i]), *(len(r[i]) for r in rows)) for i in keep}
        fixed = sum(natural[i] for i in keep if headers[i] not in wrap) + 2 * (len(keep) - 1)
        room = _share({i: n for i, n in natural.items() if headers[i] in wrap}, max(width - fixed, 0))
        if all(w >= min(natural[i], 24) for i, w in room.items()) or len(dropped) == len(drop):
            break
        dropped.append(drop[len(dropped)])
        keep.remove(headers.index(dropped[-1]))
    lines = []
    for r in rows:
        parts = [textwrap.wrap(r[i], max(room[i], 8), break_on_hyphens=False) or [""] if i in room else [r[i]]
                 for i in keep]
        lines += [[cell[k] if k < len(cell) else "" for cell in parts] for k in range(max(map(len, parts)))]
    text = _table([headers[i] for i in keep], lines)
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in text.splitlines()), dropped


def _reflow(text: str, width: int) -> str:
    """A docstring's prose paragraphs wrapped to `width`; indented blocks (formulas) and lists as written."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        verbatim = any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in lines)
        out.append(block if verbatim else textwrap.fill(" ".join(lines), width, break_on_hyphens=False))
    return "\n\n".join(out)


def _show_method(name: str, width: int) -> None:
    """Everything about one method: its whole docstring, paper, taps, every parameter and a config example."""
    import inspect

    from kdforge.methods import method_class, method_params

    cls = method_class(name)
    params = method_params(name)

    def say(text: str) -> None:
        print(textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False))

    print(f"{cls.name}: {_reflow(inspect.getdoc(cls) or '', width)}")
    print()
    say(f"paper: {cls.paper}")
    say(f"needs a teacher: {'yes' if cls.needs_teacher else 'no'}; uses labels: {'yes' if cls.needs_labels else 'no'}")
    say(f"taps by default: {cls.default_taps}")
    if cls.uses_hints:
        say("takes PURSUhInT hint layers from a run's `hints:` section when its own layers are not given "
            "(docs/hints.md)")
    if cls.pretrain_epochs:
        say(f"runs a stage before training: {cls.pretrain_epochs} epochs (parameter pretrain_epochs)")
    if params:
        print()
        print(_table(["parameter", "type", "default"], [[p.name, p.type_name, _format_default(p.default)]
                                                        for p in params]))
    required = [p for p in params if _is_required(p)]
    if required:
        say(f"required: {', '.join(f'{p.name} ({p.type_name})' for p in required)}: a config must give "
            f"{'it' if len(required) == 1 else 'them'}")
    say(f"usual weight on CIFAR-100: {cls.typical_weight:g}")
    print(f"\nin a config:\n  losses:\n    {cls.name}:\n      weight: {cls.typical_weight:g}")
    for p in params:
        value = f"<required {p.type_name}>" if _is_required(p) else _yaml_value(p.default)
        print(f"      {p.name}: {value}")


def _run_methods(args) -> int:
    from kdforge.methods import method_class, method_names, method_params

    width = _terminal_width()
    if args.name:
        _show_method(args.name, width)
        return 0
    rows = []
    for name in method_names():
        cls = method_class(name)
        defaults = ", ".join(f"{p.name}={_format_default(p.default)}" for p in method_params(name)
                             if not p.name.endswith("_layers"))  # layers: see the taps column
        rows.append([name, "yes" if cls.needs_teacher else "no", "yes" if cls.uses_hints else "-",
                     f"{cls.typical_weight:g}", cls.default_taps, defaults or "-", cls.paper])
    table, dropped = _fit_table(["method", "teacher", "hints", "weight", "taps by default", "defaults", "paper"],
                                rows, width, wrap=("taps by default", "defaults", "paper"),
                                drop=("taps by default", "defaults"))
    print(table)
    left_out = (f" Left out to fit {width} columns: {' and '.join(dropped)} (set COLUMNS for a wider listing)."
                if dropped else "")
    print()
    print(textwrap.fill("`kdforge methods NAME` shows one method in full: its description, parameters, defaults "
                        f"and paper.{left_out} hints: takes the layers a run's `hints:` selects "
                        "(`kdforge hints --help`).", width, break_on_hyphens=False))
    return 0


methods_command = SimpleNamespace(add_parser=_add_methods)


# ----------------------------------------------------------------------------- layers
def _add_layers(sub) -> None:
    p = sub.add_parser("layers", help="list a model's module names that can be tapped, with output shapes",
                       description="Run one dummy image through MODEL and list every module name with its "
                                   "type and output shape. Use these names for methods' layers; add "
                                   "':input' to a name to tap the module's input instead.")
    p.add_argument("model")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--input-size", type=positive_int, default=None, help="image size (default: the model's own)")
    p.add_argument("--filter", default="*", help="glob over module names, e.g. 'layer*.?' for blocks")
    p.add_argument("--all", action="store_true",
                   help="list every module (default: skip BatchNorm/activation leaves)")
    p.set_defaults(func=_run_layers)


def _run_layers(args) -> int:
    import torch

    from kdforge.features import layer_shapes
    from kdforge.models import build_model, model_info

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
    print(_table(["module", "type", "output shape", "role"], rows))
    if classifier:
        print(f"\nembedding (classifier input): '{classifier}:input'")
    if any(name.endswith(".out_relu") for name, _ in model.named_modules()):
        print("pre-activation block output: '<block>.out_relu:input' (out_relu modules are listed with --all)")
    return 0


layers_command = SimpleNamespace(add_parser=_add_layers)
