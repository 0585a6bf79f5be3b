"""`kdforge` command line: one sub-command per file in this package."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from kdforge.cli import (attention, compare, ddnn, evaluate, export, hints, layers, methods, models, netgraft, pack,
                         predict, quickstart, report, sftn, train, tune)
from kdforge.errors import KDForgeError

COMMANDS = [train, evaluate, export, predict, report, compare, tune, hints, sftn, ddnn, netgraft, quickstart, models,
            methods, layers, attention, pack]
DEBUG_HELP = "show full tracebacks for errors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdforge",
        description="Knowledge distillation for image classifiers. `kdforge COMMAND --help` for details.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # `kdforge CMD ... --debug` too; SUPPRESS: no reset to False
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KDForgeError as exc:
        if args.debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # in a distributed run the processes fail alike: rank 0 says it
            print(f"kdforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kdforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kdforge methods | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
        return 141
