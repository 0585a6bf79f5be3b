"""report.html: one self-contained page (inline style, figures as data: URIs, no scripts, no links out)."""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path
from typing import Any

from kdforge.report.gains import GAIN_HEADERS, GAIN_NOTE, row_cells as gain_cells
from kdforge.report.table import HEADERS, count_phrase, row_cells

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; margin-top: 0; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; }
th { vertical-align: bottom; }
td { white-space: nowrap; }
td.text { white-space: normal; min-width: 8em; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
code { font-size: 0.9em; }
"""
NUMERIC = {i for i, h in enumerate(HEADERS) if i >= HEADERS.index("top-1 last (mean ± std)")}


def data_uri(png: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def _html_table(headers: list[str], rows: list[list[str]], text_columns: set[int]) -> str:
    """An HTML table that scrolls sideways inside the page rather than widening it; cells outside
    `text_columns` right-aligned as numbers, text cells (but the first) wrapped."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)

    def cell(i: int, text: str) -> str:
        kind = "num" if i not in text_columns else "text" if i else ""
        return f'<td class="{kind}">{e(text)}</td>' if kind else f"<td>{e(text)}</td>"

    body = ["<tr>" + "".join(cell(i, c) for i, c in enumerate(cells)) + "</tr>" for cells in rows]
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def _table(records: list[dict[str, Any]]) -> str:
    return _html_table(HEADERS, [row_cells(r) for r in records], set(range(len(HEADERS))) - NUMERIC)


def _gain_table(gains: list[dict[str, Any]], baseline: str) -> str:
    e = html.escape
    table = _html_table(GAIN_HEADERS, [gain_cells(r) for r in gains], {0, 4})  # group and verdict are text
    return f"<h2 id=\"gains\">Gain over {e(baseline)}</h2>\n<p>{e(GAIN_NOTE)}</p>\n{table}"


def _reference_table(rows: list[dict[str, Any]], name: str, reference: dict[str, Any]) -> str:
    from kdforge.report.reference import HEADERS as REF_HEADERS, reference_cells

    e = html.escape
    if not rows:
        return f"<h2 id=\"published\">{e(reference['title'])}</h2>\n<p>No group matches a published row.</p>"
    sources = "\n".join(f"<li><b>{e(key)}</b>: {e(reference['sources'][key]['cite'])}; "
                        f"{e(reference['sources'][key]['epoch'])} epoch; runs: {e(reference['sources'][key]['runs'])}. "
                        f"{e(reference['sources'][key]['notes'])}.</li>" for key in sorted({r["source"] for r in rows}))
    table = _html_table(REF_HEADERS, [reference_cells(r) for r in rows], {0, 1, 7, 8, 9})
    return (f"<h2 id=\"published\">{e(reference['title'])} beside ours (<code>--reference {e(name)}</code>)</h2>\n"
            f"<p>Ours: the last epoch. A source that reports the best epoch selected it on the test split. The "
            f"published runs trained {e(str(reference.get('epochs', '?')))} epochs.</p>\n"
            f"{table}\n<ul>\n{sources}\n</ul>")


def render_html(records: list[dict[str, Any]], figures: dict[str, Path], grouped_by: str, notes: list[str],
                when: datetime | None = None, gains: list[dict[str, Any]] | None = None,
                baseline: str | None = None, references: list[dict[str, Any]] | None = None,
                reference: tuple[str, dict[str, Any]] | None = None) -> str:
    """The page: header, table, the gain table (with `gains`), the published numbers (with `references` and
    `reference` = (its name, its table)), figures (embedded), each group's run folders, notes."""
    e = html.escape
    gain_html = _gain_table(gains, baseline or "") if gains is not None else ""
    if references is not None and reference is not None:
        gain_html += "\n" + _reference_table(references, *reference)
    when = when or datetime.now()
    images = "\n".join(f'<h3>{e(name)}</h3>\n<img alt="{e(name)}" src="{data_uri(path)}">'
                       for name, path in figures.items())
    runs = "\n".join(f"<li><b>{e(r['label'])}</b>: " + ", ".join(f"<code>{e(p)}</code>" for p in r["runs"])
                     + "</li>" for r in records)
    notes_html = ("<h2>Notes</h2>\n<ul>\n" + "\n".join(f"<li>{e(n)}</li>" for n in notes) + "\n</ul>"
                  if notes else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kdforge report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>kdforge report</h1>
<p class="meta">{e(when.strftime("%Y-%m-%d %H:%M"))} · {count_phrase(records)},
grouped by {e(grouped_by)} · <a href="#table">table</a> · <a href="#figures">figures</a> · <a href="#runs">runs</a></p>
<h2 id="table">Results</h2>
{_table(records)}
{gain_html}
<h2 id="figures">Figures</h2>
{images}
<h2 id="runs">Runs per group</h2>
<ul>
{runs}
</ul>
{notes_html}
</body>
</html>
"""
