"""What the layer attention of a trained AFD / RTK run learned (`kdforge attention RUN`).

The run's trainer is rebuilt from the config saved in its checkpoint (student, teacher, losses, data),
the checkpoint's student and loss state (the attention modules) are loaded, and a fixed probe set of
the eval split (its first N images, no augmentation, eval mode, no gradients, fp32) goes through
`Trainer.forward`. For every attention loss (`afd`, `rtk`) the attention weights `alpha` are
averaged over the probe images; for RTK also how often each teacher key was kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdforge.engine.checkpoint import run_folder

#: who the rows and columns of `layer_weights` are, per method name
ROLES = {"afd": ("teacher", "student"), "rtk": ("student", "teacher")}


@dataclass
class LayerAttentionSummary:
    """The mean attention of one loss over the probe images."""

    key: str  # the loss key in the run's `losses:`
    method: str  # afd | rtk
    rows: list[str]  # row layer names
    cols: list[str]  # column layer names
    row_role: str  # 'teacher' or 'student'
    col_role: str
    mean_alpha: list[list[float]]  # (rows, cols), each row sums to 1
    keep_frequency: list[list[float]] | None = None  # RTK: fraction of images in which each key was kept
    params: dict[str, Any] = field(default_factory=dict)  # top_k, threshold, temperature (RTK)

    def best(self) -> list[tuple[str, str, float]]:
        """(row layer, column layer with the largest mean weight, that weight) for every row."""
        out = []
        for name, row in zip(self.rows, self.mean_alpha):
            j = max(range(len(row)), key=row.__getitem__)
            out.append((name, self.cols[j], row[j]))
        return out


@dataclass
class AttentionReport:
    run: str
    checkpoint: str
    split: str
    probe: int
    losses: list[LayerAttentionSummary]

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "checkpoint": self.checkpoint, "split": self.split, "probe": self.probe,
                "losses": {s.key: {k: v for k, v in vars(s).items() if k != "key"} for s in self.losses}}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def text(self) -> str:
        lines = [f"{self.run} ({Path(self.checkpoint).name}): {self.probe} probe images of the {self.split} split"]
        for s in self.losses:
            extra = ""
            if s.method == "rtk":
                extra = f" (top_k {s.params.get('top_k')}, threshold {s.params.get('threshold')})"
            lines.append(f"{s.key} [{s.method}]{extra}: each {s.row_role} layer -> the {s.col_role} layer "
                         f"with the largest mean weight")
            width = max(len(r) for r in s.rows)
            for i, (row, col, weight) in enumerate(s.best()):
                kept = ""
                if s.keep_frequency is not None:
                    kept = f", kept in {100 * s.keep_frequency[i][s.cols.index(col)]:.0f}% of images"
                lines.append(f"  {row:<{width}} -> {col}  ({weight:.3f}{kept})")
        return "\n".join(lines)


def attention_losses(losses) -> dict[str, Any]:
    """{key: method} of the losses that expose layer attention weights (afd, rtk)."""
    return {key: m for key, m in losses.methods.items()
            if callable(getattr(m, "layer_weights", None)) and callable(getattr(m, "weight_axes", None))}


def rebuild_trainer(ckpt: dict[str, Any], split: str | None = None, device: str = "auto", loss: str | None = None):
    """(trainer, {key: method}) of a checkpoint: models and losses rebuilt from its config and loaded
    with its weights, set up for the probe pass (fp32, eval mode); the methods are the run's afd / rtk
    losses, or only `loss`."""
    from kdforge.config import config_from_dict
    from kdforge.engine.checkpoint import load_weights
    from kdforge.engine.run import build_zoo_model, load_datasets
    from kdforge.engine.trainer import Trainer
    from kdforge.errors import CheckpointError, ConfigError
    from kdforge.methods import Losses

    cfg = config_from_dict(ckpt["config"])
    losses = Losses.from_config(cfg.losses)
    if not attention_losses(losses):
        raise ConfigError(f"{ckpt['path']}: the run has no layer-attention loss (afd or rtk); "
                          f"its losses are {', '.join(losses.methods) or 'none'}")
    if loss is not None and loss not in attention_losses(losses):
        raise ConfigError(f"--loss {loss}: not a layer-attention loss of this run; choose from "
                          f"{', '.join(attention_losses(losses))}")
    split = split or cfg.data.eval_split or "test"
    cfg = replace(cfg, data=replace(cfg.data, eval_split=split), hints=None,
                  train=replace(cfg.train, device=device, precision="fp32", channels_last=False, compile=False,
                                progress=False, tensorboard=False))
    train, evaluation = load_datasets(cfg)
    student = build_zoo_model(replace(cfg.student, checkpoint=None), train.num_classes, train.in_channels, "student",
                              image_size=train.image_size)
    load_weights(student, ckpt["student"], ckpt["path"])
    teacher = None
    if losses.needs_teacher:
        if cfg.teacher is None or not cfg.teacher.checkpoint:
            raise ConfigError(f"{ckpt['path']}: the saved config names no teacher.checkpoint")
        teacher = build_zoo_model(cfg.teacher, train.num_classes, train.in_channels, "teacher",
                                  image_size=train.image_size)
    trainer = Trainer(student, losses, train, evaluation, teacher=teacher, config=cfg,
                      run_dir=run_folder(ckpt["path"]))
    trainer.prepare()  # binds layers and builds the attention modules by shape
    try:
        losses.load_state_dict(ckpt["losses"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{ckpt['path']}: the saved loss state does not fit the rebuilt losses: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    student.eval()
    losses.eval()
    methods = attention_losses(losses)
    return trainer, methods if loss is None else {loss: methods[loss]}


@torch.no_grad()
def probe_attention(trainer, methods: dict[str, Any], probe: int = 512,
                    batch_size: int | None = None) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], int]:
    """({key: (mean alpha, keep frequency or None)}, number of probe images): the first `probe` images
    of the trainer's eval set, in order, without augmentation."""
    from kdforge.data.batches import subset_loader

    data = trainer.eval_data
    n = min(probe, len(data))
    loader = subset_loader(data, torch.arange(n), batch_size or trainer.cfg.data.eval_batch_size,
                           device=trainer.precision.device, channels_last=trainer.precision.channels_last)
    sums: dict[str, list] = {key: [0.0, None] for key in methods}
    for images, labels in loader:
        with trainer.precision.autocast():
            out = trainer.forward(images, labels)
            for key, method in methods.items():
                alpha, kept = method.layer_weights(out)
                sums[key][0] = sums[key][0] + alpha.double().sum(dim=0).cpu()
                if kept is not None:
                    count = kept.double().sum(dim=0).cpu()
                    sums[key][1] = count if sums[key][1] is None else sums[key][1] + count
    return {key: (s / n, None if k is None else k / n) for key, (s, k) in sums.items()}, n


def attention_report(run: str | Path, which: str = "last", probe: int = 512, split: str | None = None,
                     loss: str | None = None, device: str = "auto") -> AttentionReport:
    """The mean layer attention of a trained run's afd / rtk losses (or only `loss`)."""
    from kdforge.engine.checkpoint import load_checkpoint
    from kdforge.engine.precision import resolve_device

    ckpt = load_checkpoint(run, which, map_location="cpu")
    trainer, methods = rebuild_trainer(ckpt, split, str(resolve_device(device)), loss)
    means, n = probe_attention(trainer, methods, probe)
    summaries = []
    for key, method in methods.items():
        rows, cols = method.weight_axes()
        alpha, kept = means[key]
        row_role, col_role = ROLES.get(method.name, ("row", "column"))
        params = {p: getattr(method, p) for p in ("top_k", "threshold", "temperature") if hasattr(method, p)}
        summaries.append(LayerAttentionSummary(
            key, method.name, list(rows), list(cols), row_role, col_role, alpha.tolist(),
            None if kept is None else kept.tolist(), params))
    return AttentionReport(str(run_folder(run)), ckpt["path"], trainer.cfg.data.eval_split, n, summaries)


def plot_attention(report: AttentionReport, path: str | Path, annotate_max: int = 12) -> Path:
    """Heat-maps of the mean weights (and, for RTK, the keep frequencies), one row of panels per loss;
    values are written in the cells when the matrix has at most `annotate_max` rows and columns."""
    import matplotlib.pyplot as plt
    import numpy as np

    from kdforge.plots import save_figure  # sets the Agg backend

    n_panels = max(1 + (s.keep_frequency is not None) for s in report.losses)
    cells = max(max(len(s.rows), len(s.cols)) for s in report.losses)
    size = min(3.5 + 0.35 * cells, 12.0)
    fig, axes = plt.subplots(len(report.losses), n_panels, figsize=(n_panels * (size + 1.5), len(report.losses) * size),
                             squeeze=False)
    for r, s in enumerate(report.losses):
        panels = [(np.asarray(s.mean_alpha), "mean attention weight", "viridis")]
        if s.keep_frequency is not None:
            panels.append((np.asarray(s.keep_frequency), "fraction of images with the key kept", "magma"))
        for c in range(n_panels):
            ax = axes[r][c]
            if c >= len(panels):
                ax.axis("off")
                continue
            matrix, label, cmap = panels[c]
            image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=1.0 if c else max(float(matrix.max()), 1e-12),
                              interpolation="nearest", aspect="auto")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
            ax.set_xticks(range(len(s.cols)), s.cols, rotation=90, fontsize=7)
            ax.set_yticks(range(len(s.rows)), s.rows, fontsize=7)
            ax.set_xlabel(f"{s.col_role} layer")
            ax.set_ylabel(f"{s.row_role} layer")
            if max(matrix.shape) <= annotate_max:
                top = matrix.max() if matrix.size else 1.0
                for i in range(matrix.shape[0]):
                    for j in range(matrix.shape[1]):
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="black" if matrix[i, j] > 0.6 * (1.0 if c else top) else "white")
            what = "mean weights" if c == 0 else "keep frequency"
            extra = f", top_k {s.params.get('top_k')}" if s.method == "rtk" else ""
            ax.set_title(f"{s.key} [{s.method}{extra}]: {what}\n({report.probe} {report.split} images; "
                         f"each {s.row_role} layer attends over {s.col_role} layers)", fontsize=9)
    return save_figure(fig, path)
