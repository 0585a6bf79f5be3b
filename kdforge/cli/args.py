"""Argument types shared by the commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_recipe_arguments(p: argparse.ArgumentParser, out: str, out_help: str,
                         epochs_help: str = "epochs of every run (default: the config's)") -> None:
    """The options every recipe command shares: base configs, --seeds, --epochs, --set, --out, --no-progress."""
    p.add_argument("config", nargs="*", help="base config file(s) for every run (data, optim, schedule, train); "
                                             "default: the quickstart's digits settings")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=positive_int, default=None, help=epochs_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. --set data.root=/data")
    p.add_argument("--out", default=out, help=out_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """A one-line ConfigError when `path`, or a folder above it, is a file: the command could not make
    its output folder there (and would fail with a traceback after its first run)."""
    from kdforge.errors import ConfigError

    path = Path(path)
    for folder in [*reversed(path.parents), path]:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder; give a folder for the results")


def recipe_base(args, default: dict) -> dict:
    """A recipe's shared settings: `default` without config files, else the files merged in order;
    then `--set` overrides (`args.overrides`) and `--epochs`. Checks `--out` first."""
    import copy

    from kdforge.config import merge_configs
    from kdforge.config_files import parse_override, read_yaml, set_by_path

    check_out_folder(args.out)
    base: dict = copy.deepcopy(default) if not args.config else {}
    for path in args.config:
        base = merge_configs(base, read_yaml(path))
    for text in args.overrides:
        set_by_path(base, *parse_override(text))
    if args.epochs:
        set_by_path(base, "schedule.epochs", args.epochs)
    return base


def method_overrides(method: str, texts: list[str], flag: str, exclude: tuple[str, ...] = (),
                     hint: str = "") -> dict:
    """{parameter: value} from `--<flag> KEY=VALUE` texts, each checked to be a parameter of `method`."""
    from kdforge.config_files import parse_override
    from kdforge.errors import ConfigError
    from kdforge.methods import method_params

    known = {p.name for p in method_params(method)} - set(exclude)
    values = {}
    for text in texts:
        key, value = parse_override(text)
        if key not in known:
            raise ConfigError(f"{flag} {key}: not an {method.upper()} parameter{' here' if exclude else ''}; "
                              f"one of {', '.join(sorted(known))}{hint}")
        values[key] = value
    return values
