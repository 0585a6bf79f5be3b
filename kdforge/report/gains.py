"""Each group against a baseline group (e.g. the student alone): top-1 gain paired by seed, and a verdict.

A group's gain on seed s is its run's last-epoch top-1 minus the baseline's run of the same
seed; the gain is the mean ± sample std of those differences over the seeds both have, with its
95 % confidence interval (Student's t on the per-seed differences, `recipes.stats.paired_difference`).
The verdict is the rule fixed before looking: "higher" when the interval lies above 0, "lower" when
below, "not resolved" otherwise (and with one shared seed). Rows are sorted by mean top-1, best
first. Nothing here looks at a best epoch.
"""

from __future__ import annotations

from typing import Any

from kdforge.recipes.stats import mean_std, paired_difference
from kdforge.report.table import MISSING, markdown_grid, md_cell

__all__ = ["gain_rows", "gain_markdown", "gain_section", "GAIN_HEADERS", "GAIN_NOTE"]

GAIN_HEADERS = ["group", "top-1 last (mean ± std)", "gain (mean ± std)", "95 % interval", "vs baseline",
                "val top-1 last", "ms / step", "extra params", "seeds"]
GAIN_NOTE = ("Gain: a group's last-epoch top-1 minus the baseline's on the same seed, mean ± std over the seeds "
             "both have, and its 95 % confidence interval (Student's t on the per-seed differences). Verdict: "
             "higher if the interval lies above 0, lower if below, else not resolved; best first.")


def _by_seed(record: dict[str, Any], metric: str) -> dict[Any, float]:
    values = record["metrics"][metric]["values"]
    return {seed: v for seed, v in zip(record["seeds"], values) if v is not None}


def gain_rows(records: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per record (report.json's groups): top-1, the gain over the `baseline` label's group
    paired by seed, val top-1, ms per step, extra (method) parameters. A ValueError names the labels
    when `baseline` is none of them."""
    base = next((r for r in records if r["label"] == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not a group of this report; the groups are "
                         f"{', '.join(r['label'] for r in records)}")
    base_top1 = _by_seed(base, "top1_last")
    rows = []
    for record in records:
        top1 = _by_seed(record, "top1_last")
        paired = paired_difference(top1, base_top1)
        diffs = paired["diffs"]
        m = record["metrics"]
        rows.append({
            "label": record["label"], "is_baseline": record is base,
            "top1": mean_std(list(top1.values())), "top1_values": list(top1.values()),
            "gain": mean_std(diffs) if diffs else None, "gains": diffs,
            "interval": None if paired["n"] < 2 else (paired["low"], paired["high"]),
            "verdict": "baseline" if record is base else paired["verdict"] if diffs else "no shared seed",
            "val_top1": m["val_top1_last"]["mean"], "ms_per_step": m["ms_per_step"]["mean"],
            "method_params": m["method_params"]["mean"], "seeds": [s for s in record["seeds"]],
        })
    rows.sort(key=lambda r: -r["top1"][0] if r["top1"][0] == r["top1"][0] else float("inf"))
    return rows


def _pm(pair: tuple[float, float] | None, digits: int = 2, sign: bool = False) -> str:
    if pair is None or pair[0] != pair[0]:
        return MISSING
    return f"{pair[0]:{'+' if sign else ''}.{digits}f} ± {pair[1]:.{digits}f}"


def _num(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def _interval(pair: tuple[float, float] | None) -> str:
    return MISSING if pair is None else f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def row_cells(row: dict[str, Any]) -> list[str]:
    return [row["label"], _pm(row["top1"]), MISSING if row["is_baseline"] else _pm(row["gain"], sign=True),
            MISSING if row["is_baseline"] else _interval(row["interval"]), row["verdict"], _num(row["val_top1"], ".2f"), _num(row["ms_per_step"], ".1f"),
            _num(row["method_params"], ",.0f"), str(len(row["seeds"]))]


def gain_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_grid(GAIN_HEADERS, [row_cells(r) for r in rows])


def gain_section(baseline: str, rows: list[dict[str, Any]]) -> str:
    """report.md's section: heading, what the gain is, the table."""
    return f"## Gain over {md_cell(baseline)}\n\n{GAIN_NOTE}\n\n{gain_markdown(rows)}"
