"""Pictures: learning curves (PNG) of one or several runs, and `save_figure`, which every plot uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(histories: Sequence[tuple[str, list[dict]]], path: str | Path, title: str = "") -> Path:
    """Eval top-1 and training loss per epoch; `histories` is [(label, epoch records)]."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    group_color: dict[str, str] = {}
    for label, rows in histories:
        group = label.split(" #")[0]  # "student + KD #1" and "#2" share a colour and a legend entry
        first = group not in group_color
        color = group_color.setdefault(group, colors[len(group_color) % len(colors)])
        legend = group if first else None
        epochs = [r["epoch"] for r in rows]
        ax_acc.plot(epochs, [r.get("eval_top1", float("nan")) for r in rows], color=color, label=legend, alpha=0.85)
        ax_loss.plot(epochs, [r.get("train_loss", float("nan")) for r in rows], color=color, label=legend, alpha=0.85)
    ax_acc.set(xlabel="epoch", ylabel="eval top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted sum)", title="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out `fig`, write it to `path` (folders created) at kdforge's resolution, and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no tool URL inside the file
    plt.close(fig)
    return path
