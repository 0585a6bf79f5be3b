"""One engine run of a recipe: reuse a finished run, resume an interrupted one, refuse a folder made otherwise.

A recipe (`kdforge sftn`, `kdforge ddnn`) is a sequence of ordinary engine runs, each in its
own folder under the recipe's output folder, so that the whole recipe can be run again after a
crash: `run_once` trains only what is missing. `plan_run` and `check_folder` let a recipe check
every run's settings and folder before the first one trains; a recipe's plan holds its runs as
`PlannedRun`s (label, seed, config).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.config import TRAJECTORY_KEYS, config_from_dict, config_to_dict, merge_configs, with_current_defaults
from kdforge.engine import train_from_config
from kdforge.errors import ConfigError

#: settings a reused or resumed run must share with the one asked for (those a resume refuses to change)
SAME = TRAJECTORY_KEYS
#: base-config keys a recipe decides itself for each of its runs
DECIDED = ("student", "teacher", "losses", "name", "output_dir", "seed", "hints")


def refuse_decided(base: dict[str, Any], who: str, flags: str, keys: tuple[str, ...] = DECIDED) -> None:
    """A ConfigError if the base config sets `keys` the recipe (`who`) decides; `flags` says how to set them instead."""
    decided = [key for key in keys if key in base]
    if decided:
        raise ConfigError(f"the base config sets {', '.join(decided)}, which the {who} decides; remove "
                          f"{'it' if len(decided) == 1 else 'them'} (use {flags})")


def teacher_which(base: dict[str, Any]) -> str:
    """The checkpoint of a teacher run that a recipe's students use: best.pt where the base config holds
    a validation hold-out (`data.val_split`) to choose it on, else the last epoch (never best on test)."""
    return "best" if (base.get("data") or {}).get("val_split") is not None else "last"


def teacher_section(base: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The `teacher:` section of a student run that distils from the teacher run in `run_dir`."""
    return {"checkpoint": str(run_dir), "which": teacher_which(base)}


def teacher_phrase(base: dict[str, Any]) -> str:
    """How a recipe's table names the teacher checkpoint its students used."""
    if teacher_which(base) == "best":
        return "students use each teacher run's best.pt, chosen on the validation hold-out (data.val_split)"
    return "students use each teacher run's last epoch (checkpoints/last.pt; nothing selected on the test split)"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a recipe's plan: its label in the recipe's table, its seed and its config mapping."""

    label: str
    seed: int | None
    config: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.config)


def run_dir_of(data: dict[str, Any]) -> Path:
    """The folder of the planned run `data` (its `output_dir` / `name`)."""
    return Path(data["output_dir"]) / data["name"]


def plan_run(base: dict[str, Any], output_dir: Path, name: str, **sections) -> dict[str, Any]:
    """The config mapping of run `name`: `base`, its name and folder, then `sections` (whole sections)."""
    data = merge_configs(copy.deepcopy(base), {"name": name, "output_dir": str(output_dir)})
    data.update(sections)
    return data


def check_folder(data: dict[str, Any]) -> None:
    """Validate the run's config; a folder already holding a run made with other settings is an error."""
    import yaml

    run_dir = run_dir_of(data)
    saved_file = run_dir / "config.yaml"
    if saved_file.is_file():
        changed = changed_settings(yaml.safe_load(saved_file.read_text()) or {}, data)
        if changed:
            raise ConfigError(f"{run_dir} holds a run with other {', '.join(changed)} than this pipeline asks for; "
                              f"use another --out (or delete that folder)")


def changed_settings(saved: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The `SAME` keys on which a run's saved config.yaml mapping differs from the planned run `data` (keys added
    to kdforge since that run count at their defaults, as on --resume); empty: the run can stand for `data`."""
    wanted = config_to_dict(config_from_dict(data))
    saved = with_current_defaults(saved)
    return [key for key in SAME if _at(saved, key) != _at(wanted, key)]


def _at(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def is_finished(data: dict[str, Any]) -> bool:
    return (run_dir_of(data) / "summary.json").is_file()


def run_planned(data: dict[str, Any]) -> dict[str, Any]:
    """Train the planned run `data` (checked with `check_folder`), or return its summary if it is finished."""
    check_folder(data)
    run_dir = run_dir_of(data)
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    return train_from_config(config_from_dict(data), resume=resume, overwrite=not resume and run_dir.exists())


def run_once(base: dict[str, Any], output_dir: Path, name: str, **sections) -> dict[str, Any]:
    """One engine run: reuse a finished one, resume an interrupted one, else train.

    A run folder made with other settings (another student, epochs, SFTN parameters, ...)
    is an error, never silently reused.
    """
    return run_planned(plan_run(base, output_dir, name, **sections))
