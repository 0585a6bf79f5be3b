"""What summaries written before `macs` and `teacher_model` existed lack: the student's MACs (counted
from the run's checkpoint) and the teacher's architecture (from the teacher run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdforge.report.collect import SUMMARY, Run

UNKNOWN = "—"


def teacher_architecture(run: Run) -> str | None:
    """The teacher's model name; None for a run without a teacher, '—' when it cannot be told."""
    summary = run.summary
    if "teacher_model" in summary:
        return summary["teacher_model"] or (UNKNOWN if summary.get("teacher") else None)
    teacher = run.config.get("teacher") or {}
    checkpoint = summary["teacher"] if "teacher" in summary else teacher.get("checkpoint")
    if not checkpoint:
        return None
    if teacher.get("model"):
        return str(teacher["model"])
    from kdforge.engine.checkpoint import run_folder

    folder = run_folder(checkpoint)
    for candidate in (folder, run.path.parent / folder.name):  # as trained, or a sibling of this run
        name = _student_of(candidate)
        if name:
            return name
    return UNKNOWN


def _student_of(folder: Path) -> str | None:
    """The student model of the run in `folder` (from its summary, else its config), or None."""
    import yaml

    try:
        if (folder / SUMMARY).is_file():
            return json.loads((folder / SUMMARY).read_text()).get("student")
        if (folder / "config.yaml").is_file():
            return ((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("student") or {}).get("model")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return None


def student_macs(run: Run, cache: dict[str, int | None]) -> int | None:
    """The summary's `macs`, else those counted on the student rebuilt from the run's checkpoint
    (cached by student, options and dataset); None, with a note, when that fails."""
    if run.summary.get("macs") is not None:
        return int(run.summary["macs"])
    student, data = run.config.get("student") or {}, run.config.get("data") or {}
    key = json.dumps([student.get("model") or run.summary.get("student"), student.get("options"),
                      data.get("name") or run.summary.get("dataset"), data.get("options")], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = _count_from_checkpoint(run)
    if cache[key] is None:
        run.notes.append(f"{run.path}: no MACs in {SUMMARY} and none could be counted from its checkpoint")
    return cache[key]


def _count_from_checkpoint(run: Run) -> int | None:
    from kdforge.errors import KDForgeError
    from kdforge.engine.checkpoint import load_checkpoint, model_from_record
    from kdforge.models import model_info
    from kdforge.models.complexity import count_macs

    try:
        ckpt: dict[str, Any] = load_checkpoint(run.path, "last")  # any checkpoint has the architecture
        record, data = ckpt.get("model"), ckpt.get("data") or {}
        if not record:
            return None
        model = model_from_record(record)
        size = data.get("image_size") or model_info(record["name"]).input_size
        return count_macs(model, size, data.get("in_channels") or record["in_channels"])
    except (KDForgeError, KeyError, TypeError, ValueError, RuntimeError):
        return None
