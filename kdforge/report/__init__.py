"""Compare finished runs: a Markdown table (report.md), the numbers (report.json), two PNGs and one
self-contained HTML page. Runs that differ only by seed form one row (mean ± std); `by` groups
by chosen fields instead. Nothing is trained; MACs are counted only for summaries without them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_report", "FILES"]

#: what write_report writes into its output folder
FILES = {"markdown": "report.md", "json": "report.json", "html": "report.html",
         "curves": "curves.png", "scatter": "scatter.png", "bars": "bars.png"}


def write_report(runs: list[str | Path], out: str | Path | None = None,
                 by: str | list[str] | None = None, baseline: str | None = None,
                 reference: str | None = None, extra_figures: dict[str, Path] | None = None) -> dict[str, Any]:
    """Report on `runs` (run folders, or folders whose sub-folders are runs) into `out`
    (default: `<common parent of the runs>/report`).

    `by`: fields to group by (`method`, `student`, `teacher`, `dataset`, or dotted config keys);
    None groups the runs that differ only by seed. `baseline`: a group's label; then every group's top-1
    gain over it, paired by seed (report/gains.py), is tabled too. `reference`: a published table
    (report/reference.py, e.g. 'cifar100') whose numbers go beside the groups they match. Returns
    {'groups': report.json's groups, 'table': the Markdown table, 'gains': gain rows or None, 'gain_table':
    their Markdown or None, 'references': joined published rows or None, 'reference_table': their Markdown,
    `extra_figures` ({title: PNG}, e.g. `kdforge tune`'s search pictures) go on the HTML page after the report's own.
    'markdown': report.md's text, 'files': {kind: path}, 'notes': [...], 'out': folder}.
    """
    from kdforge.errors import ConfigError
    from kdforge.report.backfill import student_macs, teacher_architecture
    from kdforge.report.collect import find_runs, read_run
    from kdforge.report.figures import plot_report_bars, plot_report_curves, plot_report_scatter
    from kdforge.report.gains import gain_markdown, gain_rows, gain_section
    from kdforge.report.grouping import group_runs, parse_fields
    from kdforge.report.html_page import render_html
    from kdforge.report.metrics import group_record
    from kdforge.report.paths import split_paths
    from kdforge.report.table import markdown_report, markdown_table

    from kdforge.report.reference import load_reference, reference_markdown, reference_rows, reference_section

    published = load_reference(reference) if reference is not None else None  # a bad name fails before any work
    folders, notes = find_runs(list(runs))
    if not folders:
        raise ConfigError("no runs given: name run folders (with summary.json) or folders of runs")
    loaded, macs_cache = [part for folder in folders for part in split_paths(read_run(folder))], {}
    for run in loaded:
        run.teacher_model = teacher_architecture(run)
        run.macs = student_macs(run, macs_cache)
    fields = parse_fields(by, loaded)
    groups = group_runs(loaded, fields)
    notes += [note for run in loaded for note in run.notes]
    out = Path(out) if out is not None else Path(os.path.commonpath([f.resolve().parent for f in folders])) / "report"
    files = {kind: out / name for kind, name in FILES.items()}
    out.mkdir(parents=True, exist_ok=True)
    plot_report_curves(groups, files["curves"], notes)
    plot_report_scatter(groups, files["scatter"], notes)
    records = [group_record(g) for g in groups]
    try:
        gains = gain_rows(records, baseline) if baseline is not None else None
    except ValueError as exc:
        raise ConfigError(f"--baseline: {exc}") from None
    plot_report_bars(groups, files["bars"], baseline)

    grouped_by = ", ".join(fields) if fields else "config except seed"
    gain_table = gain_markdown(gains) if gains is not None else None
    references = reference_rows(records, published) if published is not None else None
    sections = (gain_section(baseline, gains),) if gains is not None else ()
    if references is not None:
        sections += (reference_section(reference, published, references),)
    markdown = markdown_report(records, grouped_by, notes, sections)
    files["markdown"].write_text(markdown)
    files["json"].write_text(json.dumps({"grouped_by": grouped_by, "groups": records, "baseline": baseline,
                                         "gains": gains, "reference": reference, "references": references,
                                         "notes": notes}, indent=2, default=str) + "\n")
    figures = {"top-1 per group": files["bars"], "learning curves": files["curves"],
               "top-1 vs size and cost": files["scatter"], **(extra_figures or {})}
    files["html"].write_text(render_html(records, figures, grouped_by, notes, gains=gains, baseline=baseline,
                                         references=references,
                                         reference=(reference, published) if published is not None else None))
    return {"groups": records, "table": markdown_table(records), "gains": gains, "gain_table": gain_table,
            "references": references,
            "reference_table": reference_markdown(references) if references else None,
            "markdown": markdown, "files": {k: str(v) for k, v in files.items()}, "notes": notes, "out": str(out)}
