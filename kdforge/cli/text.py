"""Plain-text output of the listing commands: aligned tables fitted to the terminal, reflowed prose."""

from __future__ import annotations

import shutil
import textwrap


def table(headers: list[str], rows: list[list[str]], align_right: set[int] = frozenset()) -> str:
    """`headers` over `rows` in columns two spaces apart, a dashed rule under the headers; `align_right`: column numbers."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells):
        return "  ".join(str(c).rjust(w) if i in align_right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])



def terminal_width() -> int:
    """Columns of the terminal (or $COLUMNS); 80 when the output is not a terminal."""
    return max(shutil.get_terminal_size((80, 24)).columns, 20)


def share_widths(natural: dict[int, int], room: int) -> dict[int, int]:
    """Widths of the wrapping columns: `room` shared out, none wider than it needs (`natural`)."""
    widths, left = {}, room
    for k, i in enumerate(sorted(natural, key=natural.get)):
        widths[i] = min(natural[i], left // (len(natural) - k))
        left -= widths[i]
    return widths


def fit_table(headers: list[str], rows: list[list[str]], width: int, wrap: tuple[str, ...],
               drop: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """`table` no wider than `width`: the columns named in `wrap` share the room the others leave
    and wrap onto continuation lines; while one would get under 24 characters (and less than it
    needs), the columns in `drop` are left out, in that order. Returns (text, the dropped headers)."""
    keep, dropped = list(range(len(headers))), []
    while True:
        natural = {i: max(len(headers[i]), *(len(r[i]) for r in rows)) for i in keep}
        fixed = sum(natural[i] for i in keep if headers[i] not in wrap) + 2 * (len(keep) - 1)
        room = share_widths({i: n for i, n in natural.items() if headers[i] in wrap}, max(width - fixed, 0))
        if all(w >= min(natural[i], 24) for i, w in room.items()) or len(dropped) == len(drop):
            break
        dropped.append(drop[len(dropped)])
        keep.remove(headers.index(dropped[-1]))
    lines = []
    for r in rows:
        parts = [textwrap.wrap(r[i], max(room[i], 8), break_on_hyphens=False) or [""] if i in room else [r[i]]
                 for i in keep]
        lines += [[cell[k] if k < len(cell) else "" for cell in parts] for k in range(max(map(len, parts)))]
    text = table([headers[i] for i in keep], lines)
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in text.splitlines()), dropped


def reflow(text: str, width: int) -> str:
    """A docstring's prose paragraphs wrapped to `width`; indented blocks (formulas) and lists as written."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        verbatim = any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in lines)
        out.append(block if verbatim else textwrap.fill(" ".join(lines), width, break_on_hyphens=False))
    return "\n\n".join(out)
