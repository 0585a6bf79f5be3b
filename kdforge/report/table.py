"""The comparison table: one row of formatted cells per group, and report.md around it."""

from __future__ import annotations

from typing import Any

from kdforge.models.complexity import format_macs
from kdforge.recipes.stats import format_mean_std

HEADERS = ["group", "method", "teacher", "student", "seeds (n)", "top-1 last (mean ± std)",
           "top-1 best (mean ± std)", "params", "MACs", "img/s (mean)", "wall time s (mean ± std)"]
MISSING = "—"


def _present(record: dict[str, Any], name: str) -> list[float]:
    return [v for v in record["metrics"][name]["values"] if v is not None]


def _mean_std(record: dict[str, Any], name: str, digits: int = 2) -> str:
    values = _present(record, name)
    return format_mean_std(values, digits) if values else MISSING


def _distinct(record: dict[str, Any], name: str, fmt) -> str:
    values = dict.fromkeys(_present(record, name))
    return " / ".join(fmt(v) for v in values) if values else MISSING


def row_cells(record: dict[str, Any]) -> list[str]:
    """The group's cells, in HEADERS order."""
    fields, seeds = record["fields"], record["seeds"]
    speed = record["metrics"]["train_img_per_s"]["mean"]
    return [
        record["label"], fields["method"], fields["teacher"], fields["student"],
        f"{', '.join(MISSING if s is None else str(s) for s in seeds)} ({len(seeds)})",
        _mean_std(record, "top1_last"), _mean_std(record, "top1_best"),
        _distinct(record, "params", lambda v: f"{int(v):,}"), _distinct(record, "macs", format_macs),
        MISSING if speed is None else f"{speed:,.0f}", _mean_std(record, "wall_time_s", 1),
    ]


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_grid(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of `headers` and rows of cells (a '|' inside a cell escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown_table(records: list[dict[str, Any]]) -> str:
    return markdown_grid(HEADERS, [row_cells(r) for r in records])


def count_phrase(records: list[dict[str, Any]]) -> str:
    """'6 runs in 4 groups': run folders behind the rows (a depth-dynamic run fills one row per path)."""
    runs = len({path for record in records for path in record["runs"]})
    return f"{runs} run{'' if runs == 1 else 's'} in {len(records)} group{'' if len(records) == 1 else 's'}"


def markdown_report(records: list[dict[str, Any]], grouped_by: str, notes: list[str],
                    sections: tuple[str, ...] = ()) -> str:
    """report.md: the table, further `sections` (Markdown, e.g. the gain table), then each group's run
    folders, then the notes."""
    parts = [f"# Run report\n\n{count_phrase(records)}, grouped by {grouped_by}.\n", markdown_table(records),
             *(f"\n{section}" for section in sections), "\n## Runs per group\n"]
    parts += [f"- **{md_cell(r['label'])}**: " + ", ".join(f"`{path}`" for path in r["runs"]) for r in records]
    if notes:
        parts += ["\n## Notes\n", *(f"- {note}" for note in notes)]
    return "\n".join(parts) + "\n"
