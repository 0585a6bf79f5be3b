"""Which runs form one row: by default the runs that differ only by seed; with `--by`, the runs
that share the values of the given fields."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError, suggest
from kdforge.report.backfill import UNKNOWN
from kdforge.report.collect import Run

#: fields `--by` knows by name; any other field is a dotted key of the runs' config.yaml
NAMED = ("method", "student", "teacher", "dataset")
SEED_MARK = re.compile(r"(?:[-_]?seed[-_]?\d+|[-_]s\d+)$")


@dataclass
class Group:
    label: str
    key: dict[str, Any]  # what its runs share: {field: value}, or the config without the seed
    runs: list[Run]

    def distinct(self, field: str) -> str:
        """The group's values of a NAMED field, in run order, joined by ' / '."""
        values = dict.fromkeys(str(field_value(run, field) or UNKNOWN) for run in self.runs)
        return " / ".join(values)


def value_at(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def method_of(run: Run) -> str:
    """The run's losses with a non-zero weight, in the config's order, joined by '+' (e.g. 'ce+kd'); a
    weight-0 method that acts through its pre-training stage (AB's initialisation) as 'ab (stage)'."""
    from kdforge.methods.losses import parse_loss_spec

    losses = run.config.get("losses")
    if not isinstance(losses, dict):
        weights = run.summary.get("losses") or {}
        return "+".join(key for key, weight in weights.items() if weight != 0) or UNKNOWN
    parts = []
    for key, spec in losses.items():
        name, weight, params = parse_loss_spec(key, spec)
        if weight != 0:
            parts.append(key)
        elif _stage_epochs(name, params) > 0:
            parts.append(f"{key} (stage)")
    return "+".join(parts) or UNKNOWN


def _stage_epochs(name: str, params: dict[str, Any]) -> int:
    from kdforge.methods.registry import UnknownMethodError, method_class

    try:
        default = method_class(name).pretrain_epochs
    except UnknownMethodError:
        return 0
    epochs = params.get("pretrain_epochs", default)
    return epochs if isinstance(epochs, int) else 0


def teacher_label(run: Run) -> str | None:
    """The teacher's architecture and the checkpoint the students used: 'resnet20 (last)', or
    'resnet20 (best on val ...)' for a best.pt; the bare architecture where the summary does not say."""
    source = run.summary.get("teacher_checkpoint") or {}
    if run.teacher_model is None or not source.get("which"):
        return run.teacher_model
    if source["which"] == "best":
        return f"{run.teacher_model} (best.pt on {source.get('selected_on') or '?'})"
    return f"{run.teacher_model} (last.pt)"


def field_value(run: Run, field: str) -> Any:
    if field == "method":
        return method_of(run)
    if field == "student":
        return run.summary.get("student") or value_at(run.config, "student.model")
    if field == "teacher":
        return teacher_label(run)
    if field == "dataset":
        return run.summary.get("dataset") or value_at(run.config, "data.name")
    return value_at(run.config, field)


def trajectory_key(run: Run) -> dict[str, Any]:
    """What must agree for runs to differ only by seed: the config's settings that shape training
    (`config.TRAJECTORY_KEYS`, `train.max_steps`) without any `seed` (the run's, few-shot draws', ...),
    and the steps the run took. A checkpoint it starts from (teacher, student) counts by its run's
    name without the seed and by its architecture, so "KD from the teacher of its seed" groups
    over seeds while KD from a differently trained teacher of the same architecture does not."""

    if not run.config:  # no config.yaml: what the summary tells
        return {field: field_value(run, field) for field in NAMED} | {"losses": run.summary.get("losses")}
    from kdforge.config import RESUMABLE_CHANGES, TRAJECTORY_KEYS, with_current_defaults

    config = with_current_defaults(run.config)  # a run saved before a key existed groups with today's
    key = {dotted: _without_seeds(value_at(config, dotted))
           for dotted in (*TRAJECTORY_KEYS, "train.max_steps") if dotted != "seed"}
    for dotted in RESUMABLE_CHANGES:  # e.g. data.workers: the same run however fast it was read
        section, _, leaf = dotted.rpartition(".")
        if isinstance(key.get(section), dict):
            key[section].pop(leaf, None)
    for role in ("teacher", "student"):
        section = key.get(role)
        if isinstance(section, dict) and section.get("checkpoint"):
            model = run.teacher_model if role == "teacher" else section.get("model")
            section["checkpoint"] = {"run": strip_seed(checkpoint_run_name(section["checkpoint"])), "model": model}
    key["steps"] = run.summary.get("steps")
    if run.path_name is not None:  # a depth-dynamic run's path: one group per path
        key["path"] = run.path_name
    return key


def checkpoint_run_name(checkpoint: str) -> str:
    """The name of the run a checkpoint path belongs to: 'runs/t-seed1' and 'runs/t-seed1/checkpoints/best.pt'
    give 't-seed1'; a lone 'models/r8.pt' gives 'r8'. Pure path logic: the folder need not exist here."""
    path = Path(str(checkpoint).rstrip("/"))
    if path.suffix != ".pt":
        return path.name
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def _without_seeds(value: Any) -> Any:
    """`value` (a config section) with every key named 'seed' removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    return value


def parse_fields(by: str | list[str] | None, runs: list[Run]) -> list[str] | None:
    """`--by` as a list of fields (comma-separated strings allowed); a ConfigError for an unknown field."""
    if by is None:
        return None
    fields = [f.strip() for item in ([by] if isinstance(by, str) else by) for f in str(item).split(",") if f.strip()]
    if not fields:
        raise ConfigError(f"--by: no field given; use {', '.join(NAMED)} or a dotted config key such as optim.lr")
    known = sorted({key for run in runs for key in _dotted_keys(run.config)})
    for field in fields:
        if field not in NAMED and field not in known:
            raise ConfigError(f"--by: unknown field '{field}'.{suggest(field, [*NAMED, *known])} Valid fields: "
                              f"{', '.join(NAMED)}, or a dotted key of the runs' config.yaml (e.g. optim.lr, "
                              f"losses.kd.T; sections: {', '.join(k for k in known if '.' not in k)})")
    return fields


def _dotted_keys(config: Any, prefix: str = "") -> list[str]:
    if not isinstance(config, dict):
        return []
    keys = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        keys += [dotted, *_dotted_keys(value, dotted + ".")]
    return keys


def group_runs(runs: list[Run], by: list[str] | None = None) -> list[Group]:
    """Groups in order of their first run; labels made unique."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = trajectory_key(run) if by is None else {field: field_value(run, field) for field in by}
        text = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(text, Group("", key, [])).runs.append(run)
    result = list(groups.values())
    _label(result)
    return result


def strip_seed(name: str) -> str:
    """'student-KD-seed0' -> 'student-KD'; 'kd_s3' -> 'kd'."""
    return SEED_MARK.sub("", name)


def _label(groups: list[Group]) -> None:
    """The runs' common name without the seed marker, else '<method> <student>'; repeats get ' (2)', ' (3)', ..."""
    taken: set[str] = set()
    for group in groups:
        names = {strip_seed(run.name) + (f" [{run.path_name}]" if run.path_name else "") for run in group.runs}
        base = names.pop() if len(names) == 1 and "" not in names else \
            f"{group.distinct('method')} {group.distinct('student')}"
        label, n = base, 1
        while label in taken:
            n += 1
            label = f"{base} ({n})"
        taken.add(label)
        group.label = label
