"""`kdforge report RUN...`: compare runs (table, plots, one HTML page). Filled in by issue 10."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="compare runs: Markdown table, PNG plots and one self-contained HTML page")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError
