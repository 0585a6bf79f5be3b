"""The quickstart: teacher, student alone, and student + KD on the built-in digits, over seeds.

Each of the 3 x len(seeds) trainings is an ordinary engine run with its own folder;
the recipe only chains them (the KD run of seed s distils from the teacher of seed s)
and, like the other recipes, is restartable: a finished run is reused, an interrupted one
resumed, and a folder holding a run made with other settings is an error (`fresh=True`
trains every run again). It ends with `kdforge report` on them: `<out>/report/` holds the table (mean ± std over
seeds), the learning curves, top-1 vs size and cost, and one HTML page of it all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.config import config_from_dict, merge_configs
from kdforge.engine import train_from_config
from kdforge.recipes.digits import DIGITS_BASE
from kdforge.recipes.runs import run_planned, teacher_section
from kdforge.report import write_report

#: What every quickstart run shares (the recipes' one digits base); the three roles differ only in model and losses.
BASE: dict[str, Any] = DIGITS_BASE


@dataclass
class Role:
    label: str
    model: str
    losses: dict[str, Any]
    uses_teacher: bool = False

    @property
    def folder(self) -> str:
        """'student + KD' -> 'student-KD' (run folders are '<folder>-seed<s>')."""
        return self.label.replace(" + ", "-").replace(" ", "-")


def roles(teacher: str, student: str) -> list[Role]:
    return [
        Role("teacher", teacher, {"ce": 1.0}),
        Role("student alone", student, {"ce": 1.0}),
        Role("student + KD", student, {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}, uses_teacher=True),
    ]


def run_quickstart(output_dir: str | Path = "runs/quickstart", teacher: str = "resnet20",
                   student: str = "resnet8", seeds: tuple[int, ...] = (0, 1, 2), epochs: int | None = None,
                   overrides: dict[str, Any] | None = None, progress: bool = True,
                   fresh: bool = False) -> dict[str, Any]:
    """Train all runs (reusing finished ones unless `fresh`), then report on them; returns write_report's
    result (groups, table, files)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    the_roles = roles(teacher, student)
    run_dirs: list[list[Path]] = [[] for _ in the_roles]  # per role, so that the report's rows follow the roles
    for seed in seeds:
        teacher_dir = None
        for i, role in enumerate(the_roles):
            name = f"{role.folder}-seed{seed}"
            data = merge_configs(copy.deepcopy(BASE), overrides or {})
            data.update(name=name, seed=seed, output_dir=str(output_dir), losses=role.losses,
                        student={"model": role.model})
            if epochs is not None:
                data["schedule"]["epochs"] = epochs
            data["train"]["progress"] = progress
            if role.uses_teacher:
                data["teacher"] = teacher_section(data, teacher_dir)  # its last epoch (best.pt only on a val split)
            summary = (train_from_config(config_from_dict(data), overwrite=True) if fresh else run_planned(data))
            if role.label == "teacher":
                teacher_dir = Path(summary["run_dir"])
            run_dirs[i].append(Path(summary["run_dir"]))
    return write_report([d for dirs in run_dirs for d in dirs], out=output_dir / "report")
