"""The picture of a hint selection: the layer distance matrix with clusters, centres and stage ends."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdforge.hints.selection import HintSelection  # noqa: E402
from kdforge.plots import save_figure  # noqa: E402


def plot_selection(selection: HintSelection, path: str | Path, title: str = "") -> Path:
    """Heat-map of the distances; white lines between clusters, stars on the centres (hints),
    triangles above the teacher's stage ends (the usual hint points)."""
    d = np.asarray(selection.distances, dtype=float)
    n = d.shape[0]
    size = min(4.5 + 0.12 * n, 14.0)
    fig, ax = plt.subplots(figsize=(size + 1.3, size))
    image = ax.imshow(d, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"distance ({selection.metric})")
    for i in range(n - 1):
        if selection.assignment[i] != selection.assignment[i + 1]:
            ax.axhline(i + 0.5, color="white", lw=1.6)
            ax.axvline(i + 0.5, color="white", lw=1.6)
    ax.scatter(selection.centres, selection.centres, marker="*", s=220, color="red", edgecolors="white",
               linewidths=0.8, label="hint (cluster centre)", zorder=3)
    if selection.stage_ends:
        ax.scatter(selection.stage_ends, [-0.9] * len(selection.stage_ends), marker="v", s=70, color="orange",
                   clip_on=False, label="stage end", zorder=3)
    step = max(1, n // 40)
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [selection.layers[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [selection.layers[i] for i in ticks], fontsize=7)
    for label in ax.get_yticklabels() + ax.get_xticklabels():
        if label.get_text() in selection.hints:
            label.set_color("red")
            label.set_fontweight("bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -1.5)
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, -0.02 - 0.1 * min(1.0, 20 / max(n, 1))), fontsize=8,
              ncol=2, frameon=False)
    teacher = selection.teacher.get("model", "teacher")
    ax.set_title(title or f"{teacher}: {n} layers, {selection.k} clusters\nhints: {', '.join(selection.hints)}",
                 fontsize=10)
    return save_figure(fig, path)
