"""The numbers of one group: each metric's per-run values, mean and sample std (report.json)."""

from __future__ import annotations

import math
from typing import Any

from kdforge.recipes.stats import mean_std
from kdforge.report.grouping import NAMED, Group

#: summary fields compared across groups ('macs' may be counted by the report itself)
METRICS = ("top1_last", "top1_best", "params", "macs", "train_img_per_s", "wall_time_s", "val_top1_last",
           "ms_per_step", "method_params")


def metric(group: Group, name: str) -> dict[str, Any]:
    """{'values': one per run (None where missing), 'n', 'mean', 'std'} over the runs that have it."""
    values = [run.value(name) for run in group.runs]
    present = [v for v in values if v is not None]
    mean, std = mean_std(present)
    return {"values": values, "n": len(present), "mean": _finite(mean), "std": _finite(std)}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def group_record(group: Group) -> dict[str, Any]:
    """The group as report.json stores it."""
    return {
        "label": group.label,
        "key": group.key,
        "fields": {field: group.distinct(field) for field in NAMED},
        "runs": [str(run.path) for run in group.runs],
        "names": [run.name for run in group.runs],
        "seeds": [run.summary.get("seed") for run in group.runs],
        "metrics": {name: metric(group, name) for name in METRICS},
    }
