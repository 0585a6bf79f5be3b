"""The quickstart: teacher, student alone, and student + KD on the built-in digits, over seeds.

Each of the 3 x len(seeds) trainings is an ordinary engine run with its own folder;
the recipe only chains them (the KD run of seed s distils from the teacher of seed s)
and writes the comparison table (Markdown) and one PNG of all learning curves.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.engine.logger import read_log
from kdforge.plots import plot_curves
from kdforge.recipes.stats import format_mean_std

#: What every quickstart run shares; the three roles differ only in model and losses.
BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "augment": {"crop_padding": 2, "hflip": False}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "epochs": 8, "warmup_epochs": 0.5},
    "train": {"log_every": 10},
}


@dataclass
class Role:
    label: str
    model: str
    losses: dict[str, Any]
    uses_teacher: bool = False


def roles(teacher: str, student: str) -> list[Role]:
    return [
        Role("teacher", teacher, {"ce": 1.0}),
        Role("student alone", student, {"ce": 1.0}),
        Role("student + KD", student, {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}, uses_teacher=True),
    ]


def run_quickstart(output_dir: str | Path = "runs/quickstart", teacher: str = "resnet20",
                   student: str = "resnet8", seeds: tuple[int, ...] = (0, 1, 2), epochs: int | None = None,
                   overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train all runs and return {'rows': table rows, 'table': markdown, 'curves': png path}."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, list[dict]] = {}
    histories = []
    for seed in seeds:
        teacher_dir = None
        for role in roles(teacher, student):
            name = f"{role.label.replace(' + ', '-').replace(' ', '-')}-seed{seed}"
            data = copy.deepcopy(BASE)
            _merge(data, overrides or {})
            data.update(name=name, seed=seed, output_dir=str(output_dir), losses=role.losses,
                        student={"model": role.model})
            if epochs is not None:
                data["schedule"]["epochs"] = epochs
            data["train"]["progress"] = progress
            if role.uses_teacher:
                data["teacher"] = {"checkpoint": str(teacher_dir)}
            summary = train_from_config(config_from_dict(data), overwrite=True)
            if role.label == "teacher":
                teacher_dir = Path(summary["run_dir"])
            summaries.setdefault(role.label, []).append(summary)
            histories.append((f"{role.label} #{seed}", read_log(summary["run_dir"], "epoch")))
    rows = [_row(label, runs) for label, runs in summaries.items()]
    table = _markdown(rows, teacher, student, len(seeds))
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    curves = plot_curves(histories, output_dir / "curves.png",
                         title=f"digits: {teacher} teacher, {student} student, {len(seeds)} seeds")
    return {"rows": rows, "table": table, "curves": str(curves)}


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _row(label: str, runs: list[dict]) -> dict[str, Any]:
    return {
        "run": label,
        "model": runs[0]["student"],
        "top1": [r["top1_last"] for r in runs],
        "top1_mean_std": format_mean_std([r["top1_last"] for r in runs]),
        "params": runs[0]["params"],
        "wall_time_s": format_mean_std([r["wall_time_s"] for r in runs], 1),
    }


def _markdown(rows: list[dict], teacher: str, student: str, n_seeds: int) -> str:
    lines = [
        f"| run | model | top-1 % (last epoch, mean ± std, {n_seeds} seeds) | params | wall time s / run |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['run']} | {r['model']} | {r['top1_mean_std']} | {r['params']:,} | {r['wall_time_s']} |"
              for r in rows]
    return "\n".join(lines)
