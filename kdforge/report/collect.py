"""Find the run folders named on the command line and read what a report needs from each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError

SUMMARY = "summary.json"
WHAT_A_RUN_IS = "a run folder is a folder with summary.json, written when its training ends"


@dataclass
class Run:
    """One finished run: its folder (as given), summary, config and epoch records."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    macs: int | None = None  # the student's MACs (summary, or counted from its checkpoint)
    teacher_model: str | None = None  # the teacher's architecture, '—' if unknown, None without a teacher
    path_name: str | None = None  # one path of a depth-dynamic run (report/paths.py), None for a plain run
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    def value(self, metric: str) -> float | None:
        """A numeric summary field (or the MACs) as a finite float, None when absent."""
        value = self.macs if metric == "macs" else self.summary.get(metric)
        if metric == "ms_per_step" and value is None:  # summaries written before the field existed
            time_s, steps = as_number(self.summary.get("train_time_s")), as_number(self.summary.get("steps"))
            value = 1000.0 * time_s / steps if time_s is not None and steps else None
        return as_number(value)


def as_number(value: Any) -> float | None:
    """`value` as a finite float; None for a missing, non-numeric or non-finite value ('nan' in logs)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _unfinished(path: Path) -> bool:
    return path.is_dir() and not (path / SUMMARY).is_file() and (path / "checkpoints").is_dir()


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """The run folders of `paths` (each a run folder or a folder of runs), without repeats; and notes
    on the unfinished runs skipped inside folders of runs. Anything else is a ConfigError."""
    runs: list[Path] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if (path / SUMMARY).is_file():
            found = [path]
        elif _unfinished(path):
            raise ConfigError(f"{path} is an unfinished run: it has checkpoints/ but no {SUMMARY} ({WHAT_A_RUN_IS}); "
                              f"finish it with `kdforge train ... --resume`")
        elif path.is_dir():
            subs = sorted(p for p in path.iterdir() if p.is_dir())
            found = [p for p in subs if (p / SUMMARY).is_file()]
            unfinished = [p for p in subs if _unfinished(p)]
            if not found:
                more = (f"; its sub-folders {', '.join(p.name for p in unfinished)} are unfinished runs "
                        f"(checkpoints/ but no {SUMMARY})" if unfinished else "")
                raise ConfigError(f"{path} is neither a run folder nor a folder of runs ({WHAT_A_RUN_IS}){more}")
            notes += [f"skipped the unfinished run {p} (no {SUMMARY} yet)" for p in unfinished]
        else:
            what = "does not exist" if not path.exists() else "is a file"
            raise ConfigError(f"{path} {what}: give run folders or folders of runs ({WHAT_A_RUN_IS})")
        for run in found:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs, notes


def read_run(path: Path) -> Run:
    """Read summary.json, config.yaml (optional) and the epoch records (optional) of run folder `path`."""
    import yaml

    from kdforge.engine.logger import read_log

    try:
        summary = json.loads((path / SUMMARY).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / SUMMARY} cannot be read: {exc}") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path / SUMMARY} does not hold a run summary (a JSON object)")
    run = Run(path, summary, {}, [])
    config_file = path / "config.yaml"
    if config_file.is_file():
        try:
            config = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file} cannot be read: {' '.join(str(exc).split())}") from None
        run.config = config if isinstance(config, dict) else {}
    else:
        run.notes.append(f"{path} has no config.yaml: grouped by its summary")
    try:
        run.epochs = read_log(path, "epoch")
    except (OSError, ValueError, KeyError):
        pass  # no curve: plot_report_curves notes the run as having no epoch records
    return run
