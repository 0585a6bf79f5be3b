"""A depth-dynamic (ddnn) run as one run per path, so that its sub-nets get their own rows and points.

A ddnn run trains several weight-shared networks at once (DDNN + EKD, Zhao et al. 2021); its
summary's `paths` holds each one's last top-1, parameters and MACs, and its epoch records log
each sub-net's top-1 as a head (``eval_top1/<method>/<path>``).
"""

from __future__ import annotations

import copy

from kdforge.deploy.metadata import path_top1
from kdforge.report.collect import Run


def split_paths(run: Run) -> list[Run]:
    """`run` itself, or for a depth-dynamic run one Run per path: that path's name as student, its own
    top-1, params, MACs and top-1 curve; the best top-1 only for the full net (the run's)."""
    paths = run.summary.get("paths")
    if not isinstance(paths, dict) or not paths:
        return [run]
    full = ((run.config.get("student") or {}).get("options") or {}).get("full")
    runs = []
    for name, numbers in paths.items():
        part = copy.copy(run)
        part.path_name = name
        part.notes = []  # the run's own notes are kept once, on the run
        part.summary = {**run.summary, "student": name, "params": numbers.get("params"),
                        "macs": numbers.get("macs"), "top1_last": numbers.get("top1_last"),
                        "top1_best": run.summary.get("top1_best") if name == full else None}
        part.epochs = [{**record, "eval_top1": path_top1(record, name, full)} for record in run.epochs]
        runs.append(part)
    runs[0].notes = run.notes
    return runs
