"""Published numbers beside a report's rows (`kdforge report --reference cifar100`).

A reference is a JSON file in `report/references/` (the table as data, each row with its source, and each
source with what it reports: last or best epoch, over how many runs). A report group is joined to a row by
its data set, student, teacher architecture and distillation method: the losses without `ce` (`ce+kd` ->
`kd`, `ce+dkd` -> `dkd`); a run without a teacher is the row "alone" of every pair with that student, or
"teacher" of every pair with that teacher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError
from kdforge.recipes.stats import mean_std
from kdforge.report.table import markdown_grid, md_cell

__all__ = ["REFERENCES", "load_reference", "reference_rows", "reference_section"]

FOLDER = Path(__file__).parent / "references"
REFERENCES = sorted(p.stem for p in FOLDER.glob("*.json"))
HEADERS = ["group", "pair", "ours: top-1 last (mean ± std)", "runs", "our epochs", "published", "ours − published",
           "source", "published epoch", "published runs"]


def load_reference(name: str) -> dict[str, Any]:
    """The reference table `name` (one of `REFERENCES`); a ConfigError lists them for any other name."""
    if name not in REFERENCES:
        raise ConfigError(f"--reference {name!r}: kdforge has {', '.join(REFERENCES)}")
    return json.loads((FOLDER / f"{name}.json").read_text())


def _architecture(teacher_field: str) -> str | None:
    """'resnet56 (best.pt on val ...)' -> 'resnet56'; None for no (or an unknown) teacher."""
    name = teacher_field.split(" (", 1)[0].strip()
    return None if name in ("", "—") else name


def _keys(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(teacher, student, method) keys a group can stand for in a reference."""
    fields = record["fields"]
    student, teacher = fields["student"], _architecture(fields["teacher"])
    parts = [p for p in fields["method"].split("+") if p != "ce"]
    if teacher is None:
        return [] if parts else [("*", student, "alone"), (student, "*", "teacher")]
    return [(teacher, student, parts[0])] if len(parts) == 1 else []


def reference_rows(records: list[dict[str, Any]], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (group, published row) that match: ours (mean ± std of top-1 last, n), the published top-1,
    the difference and the source. Groups of another data set match nothing."""
    rows = []
    for record in records:
        if record["fields"]["dataset"] != reference["dataset"]:
            continue
        values = [v for v in record["metrics"]["top1_last"]["values"] if v is not None]
        if not values:
            continue
        mean, std = mean_std(values)
        epochs = ((record.get("key") or {}).get("schedule") or {}).get("epochs")
        for teacher, student, method in _keys(record):
            for ref in reference["rows"]:
                if ref["method"] == method and teacher in ("*", ref["teacher"]) and student in ("*", ref["student"]):
                    source = reference["sources"][ref["source"]]
                    rows.append({"label": record["label"], "pair": f"{ref['teacher']} -> {ref['student']}",
                                 "method": method, "ours": (mean, std), "n": len(values), "epochs": epochs,
                                 "published": ref["top1"],
                                 "difference": mean - ref["top1"], "source": ref["source"],
                                 "epoch": source["epoch"], "runs": source["runs"]})
    return rows


def reference_cells(row: dict[str, Any]) -> list[str]:
    """One joined row as table cells (`HEADERS`)."""
    return [row["label"], row["pair"], f"{row['ours'][0]:.2f} ± {row['ours'][1]:.2f}", str(row["n"]),
            "?" if row["epochs"] is None else f"{row['epochs']:g}", f"{row['published']:.2f}",
            f"{row['difference']:+.2f}", row["source"], row["epoch"], row["runs"]]


def reference_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_grid(HEADERS, [reference_cells(r) for r in rows])


def reference_section(name: str, reference: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """report.md's section: the joined rows, then each source cited with what it reports."""
    used = sorted({r["source"] for r in rows})
    lines = [f"## {reference['title']} beside ours (`--reference {name}`)", ""]
    if not rows:
        lines.append(f"No group matches a published row (data set {reference['dataset']}; pairs and methods: "
                     f"see kdforge/report/references/{name}.json).")
        return "\n".join(lines)
    lines += ["Ours: the last epoch, as in every kdforge table. A source that reports the best epoch selected it on "
              f"the test split. The published runs trained {reference.get('epochs', '?')} epochs: compare only runs of "
              "that schedule.", "", reference_markdown(rows), ""]
    for key in used:
        source = reference["sources"][key]
        lines.append(f"- **{md_cell(key)}**: {source['cite']}; {source['epoch']} epoch; runs: {source['runs']}. "
                     f"{source['notes']}.")
    return "\n".join(lines)
