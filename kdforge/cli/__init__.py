"""`kdforge` command line: one sub-command per file in this package."""

from __future__ import annotations

import argparse
import sys
import traceback

from kdforge.cli import attention, ddnn, evaluate, export, hints, info, netgraft, quickstart, sftn, train
from kdforge.errors import KDForgeError

COMMANDS = [train, evaluate, export, hints, sftn, ddnn, netgraft, quickstart, info.models_command, info.methods_command,
            info.layers_command, attention]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdforge",
        description="Knowledge distillation for image classifiers. `kdforge COMMAND --help` for details.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KDForgeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"kdforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kdforge {args.command}: interrupted", file=sys.stderr)
        return 130
