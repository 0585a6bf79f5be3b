"""SFTN pipeline: a standard and a student-friendly teacher, then the same students from each, side by side.

For every seed: (1) a standard teacher (CE), (2) an SFTN teacher (the `sftn` method with
branches of the student's architecture), (3) for each distillation method, a fresh student
distilled from each teacher. Every step is an ordinary engine run with its own folder; a
finished run is reused and an interrupted one resumed, so the pipeline can be restarted.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from kdforge.config import merge_configs
from kdforge.methods.usual import usual_losses
from kdforge.recipes.digits import DIGITS_BASE  # the quickstart's digits settings
from kdforge.recipes.runs import run_once, teacher_phrase, teacher_section
from kdforge.recipes.stats import format_mean_std
from kdforge.report import write_report

KINDS = ("standard", "SFTN")


def run_sftn_pipeline(teacher: str, student: str, methods: list[str], *, base: dict[str, Any] | None = None,
                      seeds: tuple[int, ...] = (0, 1, 2), output_dir: str | Path = "runs/sftn",
                      sftn: dict[str, Any] | None = None, student_overrides: dict[str, Any] | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Train everything; return {'rows', 'table', 'report'} and write results.md / results.json, and
    `kdforge report` on the runs (report/), to `output_dir`.

    `student_overrides` (a config mapping) applies to the students' runs only, e.g. the lower
    learning rate of ShuffleNet/MobileNet students: {"optim": {"lr": 0.01}}.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = merge_configs(copy.deepcopy(base if base is not None else DIGITS_BASE), {"train": {"progress": progress}})
    stage2 = {m: usual_losses(m) for m in methods}
    student_base = merge_configs(copy.deepcopy(base), student_overrides or {})
    teacher_losses = {"standard": {"ce": 1.0}, "SFTN": {"sftn": {"weight": 1.0, "student": student, **(sftn or {})}}}
    results: dict[str, dict[str, list]] = {kind: {} for kind in KINDS}
    run_dirs: list[Path] = []
    for seed in seeds:
        for kind in KINDS:
            t = run_once(base, output_dir, f"{kind.lower()}-teacher-seed{seed}", seed=seed,
                         student={"model": teacher}, losses=teacher_losses[kind])
            row = results[kind]
            run_dirs.append(Path(t["run_dir"]))
            row.setdefault("teacher", []).append(t["top1_last"])
            row.setdefault("s/epoch", []).append(t.get("train_time_s", t["wall_time_s"]) / max(t["epochs"], 1e-9))
            for name, value in _branch_top1(Path(t["run_dir"])).items():
                row.setdefault(name, []).append(value)
            for method, losses in stage2.items():
                s = run_once(student_base, output_dir, f"{kind.lower()}-{method}-seed{seed}", seed=seed,
                             student={"model": student}, teacher=teacher_section(student_base, t["run_dir"]),
                             losses=losses)
                row.setdefault(f"student {method}", []).append(s["top1_last"])
                run_dirs.append(Path(s["run_dir"]))
    table = _markdown(results, teacher, student, methods, len(seeds)) + f"\n\n{teacher_phrase(student_base)}."
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = write_report(run_dirs, out=output_dir / "report")
    return {"rows": results, "table": table, "report": report["files"]}


def _branch_top1(run_dir: Path) -> dict[str, float]:
    """Last evaluation's top-1 of each SFTN branch of a teacher run (none for a standard teacher)."""
    from kdforge.engine.logger import read_log

    epochs = read_log(run_dir, "epoch")
    last = epochs[-1] if epochs else {}
    return {f"branch {k.rsplit('/', 1)[-1].removeprefix('branch')}": v for k, v in last.items()
            if k.startswith("eval_top1/")}


def _markdown(results: dict[str, dict[str, list]], teacher: str, student: str, methods: list[str],
              n_seeds: int) -> str:
    branches = sorted({k for row in results.values() for k in row if k.startswith("branch")})
    columns = ["teacher", *branches, *(f"student {m}" for m in methods), "s/epoch"]
    head = (f"top-1 % (last epoch, mean ± std over {n_seeds} seeds); teacher {teacher}, student {student}; "
            f"s/epoch: the teacher's training time per epoch (training steps only)")
    lines = [head, "", "| teacher kind | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind, row in results.items():
        cells = [format_mean_std(row[c], 1 if c == "s/epoch" else 2) if c in row else "-" for c in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
