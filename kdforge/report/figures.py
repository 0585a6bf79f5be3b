"""The report's PNGs: learning curves of every run, and top-1 against size and cost per group.

Both are saved by `kdforge.plots.save_figure` with a fixed figure size, so their size in
pixels is known: CURVES_PX and SCATTER_PX.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from kdforge.plots import save_figure  # importing kdforge.plots selects the Agg backend
from kdforge.report.collect import as_number
from kdforge.report.grouping import Group

DPI = 110  # the resolution of save_figure
CURVES_PX = (1210, 440)  # (width, height)
SCATTER_PX = (1210, 495)
BARS_WIDTH_IN = 8.0  # the bar chart's height grows with the number of groups


def _figure(px: tuple[int, int], panels: int = 2):
    return plt.subplots(1, panels, figsize=(px[0] / DPI, px[1] / DPI))


def group_colors(groups: list[Group]) -> list[str]:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [colors[i % len(colors)] for i in range(len(groups))]


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records that have a finite `key`."""
    points = [(as_number(r.get("epoch")), as_number(r.get(key))) for r in rows]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    return [x for x, _ in points], [y for _, y in points]


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_report_curves(groups: list[Group], path: str | Path, notes: list[str]) -> Path:
    """Eval top-1 and training loss per epoch of every run: one colour and one legend entry per group."""
    fig, (ax_acc, ax_loss) = _figure(CURVES_PX)
    losses: list[float] = []
    for group, color in zip(groups, group_colors(groups)):
        labelled = set()
        for run in group.runs:
            if not run.epochs:
                notes.append(f"{run.path}: no epoch records, left out of curves.png")
            for ax, key in ((ax_acc, "eval_top1"), (ax_loss, "train_loss")):
                xs, ys = _series(run.epochs, key)
                if xs:
                    label = None if ax in labelled else group.label
                    labelled.add(ax)
                    ax.plot(xs, ys, color=color, label=label, alpha=0.85, marker="." if len(xs) < 3 else None)
                    losses += ys if key == "train_loss" else []
    ax_acc.set(xlabel="epoch", ylabel="eval top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted sum)", title="loss")
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        else:
            _no_data(ax, "no epoch records")
    return save_figure(fig, path)


def plot_report_scatter(groups: list[Group], path: str | Path, notes: list[str]) -> Path:
    """Top-1 (last epoch, mean ± std over the group's runs) against parameters and against MACs, log x."""
    from kdforge.report.metrics import metric

    fig, axes = _figure(SCATTER_PX)
    top1 = [metric(g, "top1_last") for g in groups]
    for ax, cost, xlabel in zip(axes, ("params", "macs"), ("parameters", "MACs")):
        shown = 0
        for group, color, acc in zip(groups, group_colors(groups), top1):
            x = metric(group, cost)["mean"]
            if x is None or x <= 0 or acc["mean"] is None:
                missing = "top-1" if acc["mean"] is None else xlabel
                notes.append(f"group {group.label}: no {missing}, left out of the top-1 vs {xlabel} plot")
                continue
            ax.errorbar([x], [acc["mean"]], yerr=[acc["std"]], fmt="o", color=color, capsize=4)
            ax.annotate(group.label, (x, acc["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
            shown += 1
        ax.set(xlabel=f"{xlabel} (log scale)", ylabel="top-1 last epoch (%)", title=f"top-1 vs {xlabel}")
        if shown:
            ax.set_xscale("log")
            ax.margins(x=0.25, y=0.15)
        else:
            _no_data(ax, f"no group has both top-1 and {xlabel}")
        ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_report_bars(groups: list[Group], path: str | Path, baseline: str | None = None) -> Path:
    """Top-1 (last epoch) per group as horizontal bars, best on top, ± std error bars; the `baseline`
    group in grey with a dashed line at its mean. The axis starts near the lowest bar, not at 0."""
    from kdforge.report.metrics import metric

    rows = [(g.label, metric(g, "top1_last")) for g in groups]
    rows = sorted([(label, m["mean"], m["std"] or 0.0) for label, m in rows if m["mean"] is not None],
                  key=lambda r: r[1])
    height = max(2.5, 0.32 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(BARS_WIDTH_IN, height))
    if not rows:
        _no_data(ax, "no group has a top-1")
        return save_figure(fig, path)
    labels, means, stds = zip(*rows)
    colors = ["0.6" if label == baseline else "tab:blue" for label in labels]
    ax.barh(range(len(rows)), means, xerr=stds, color=colors, capsize=3, error_kw={"elinewidth": 1})
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    low = min(m - s for _, m, s in rows)
    high = max(m + s for _, m, s in rows)
    pad = max(0.5, 0.08 * (high - low))
    ax.set_xlim(low - pad, min(100.0, high + pad) if high < 100 else high + pad)
    if baseline is not None and baseline in labels:
        ax.axvline(means[labels.index(baseline)], color="0.3", linestyle="--", linewidth=1,
                   label=f"{baseline} (mean)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="top-1 last epoch (%), mean ± std over seeds (axis does not start at 0)",
           title="top-1 per group")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)
