"""`kdforge methods [NAME]`: the distillation methods, or one method's parameters in full."""

from __future__ import annotations

import textwrap

from kdforge.cli.text import fit_table, reflow, table, terminal_width


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the distillation methods, or show one method's parameters",
                       description="List every method with its paper, the layers it taps and its defaults, "
                                   "fitted to the terminal's width (COLUMNS); with NAME, show that method's "
                                   "description, parameters and defaults in full and how to use it in a config.")
    p.add_argument("name", nargs="?", help="a method name")
    p.set_defaults(func=run)


def _format_default(value) -> str:
    import inspect
    return "required" if value is inspect.Parameter.empty else repr(value)


def _is_required(param) -> bool:
    return _format_default(param.default) == "required"


def _yaml_value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _show_method(name: str, width: int) -> None:
    """Everything about one method: its whole docstring, paper, taps, every parameter and a config example."""
    import inspect

    from kdforge.methods import method_class, method_params

    cls = method_class(name)
    params = method_params(name)

    def say(text: str) -> None:
        print(textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False))

    print(f"{cls.name}: {reflow(inspect.getdoc(cls) or '', width)}")
    print()
    say(f"paper: {cls.paper}")
    say(f"needs a teacher: {'yes' if cls.needs_teacher else 'no'}; uses labels: {'yes' if cls.needs_labels else 'no'}")
    say(f"taps by default: {cls.default_taps}")
    if cls.student_requirement:
        say(f"the student must be: {cls.student_requirement}")
    if cls.uses_hints:
        say("takes PURSUhInT hint layers from a run's `hints:` section when its own layers are not given "
            "(docs/hints.md)")
    say("vision transformers (token models): " + ("yes: block outputs arrive as patch-token maps, the embedding "
                                                    "is the pre-logits feature" if cls.token_models is None
                                                    else f"no: {cls.token_models}"))
    if cls.pretrain_epochs:
        say(f"runs a stage before training: {cls.pretrain_epochs} epochs (parameter pretrain_epochs)")
    if params:
        print()
        print(table(["parameter", "type", "default"], [[p.name, p.type_name, _format_default(p.default)]
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


def run(args) -> int:
    from kdforge.methods import method_class, method_names, method_params

    width = terminal_width()
    if args.name:
        _show_method(args.name, width)
        return 0
    rows = []
    for name in method_names():
        cls = method_class(name)
        defaults = ", ".join(f"{p.name}={_format_default(p.default)}" for p in method_params(name)
                             if not p.name.endswith("_layers"))  # layers: see the taps column
        rows.append([name, "yes" if cls.needs_teacher else "no", "yes" if cls.uses_hints else "-",
                     "yes" if cls.token_models is None else "no", f"{cls.typical_weight:g}", cls.default_taps,
                     defaults or "-", cls.paper])
    table, dropped = fit_table(["method", "teacher", "hints", "ViT", "weight", "taps by default", "defaults", "paper"],
                                rows, width, wrap=("taps by default", "defaults", "paper"),
                                drop=("taps by default", "defaults"))
    print(table)
    left_out = (f" Left out to fit {width} columns: {' and '.join(dropped)} (set COLUMNS for a wider listing)."
                if dropped else "")
    print()
    print(textwrap.fill("`kdforge methods NAME` shows one method in full: its description, parameters, defaults "
                        f"and paper.{left_out} hints: takes the layers a run's `hints:` selects "
                        "(`kdforge hints --help`). ViT: can distil with a vision transformer as student or teacher "
                        "(docs/models.md).", width, break_on_hyphens=False))
    return 0
