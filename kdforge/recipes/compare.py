"""`kdforge compare`: the student alone and each distillation method, same settings, over seeds.

"Which method is best for my teacher, student and data?" Every run is an ordinary engine run in
its own folder under the output folder (`<label>-seed<s>`): finished runs are reused, interrupted
ones resumed, a folder made with other settings refused. The teacher is either one run or
checkpoint for every seed (`teacher.checkpoint` in the base config), or trained here once per
seed with CE (`teacher_model`; the student-alone run itself where it is the student's architecture),
and then distilled from at its last epoch (best.pt only when the
base config holds a validation hold-out). Runs go seed by seed, so an interrupted comparison has
whole seeds done. It ends with `kdforge report` (gain over the student alone, paired by seed)
and, where `data.val_split` is set, names the method with the best validation top-1: the choice
is never made on the test split.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdforge.config import config_from_dict
from kdforge.config_files import read_yaml
from kdforge.errors import ConfigError, KDForgeError
from kdforge.methods.usual import usual_losses
from kdforge.recipes.runs import (PlannedRun, check_folder, is_finished, plan_run, refuse_decided, run_planned,
                                  teacher_section)
from kdforge.recipes.stats import mean_std

__all__ = ["MethodSpec", "method_spec", "plan_compare", "run_compare", "BASELINE", "TEACHER"]

BASELINE = "student-alone"
TEACHER = "teacher"
#: what the base config of a comparison may not set (the comparison decides them per run)
DECIDED = ("losses", "name", "output_dir", "seed", "hints")


#: what a method file may set in `optim:` besides `losses:`: DOT is a way of training any method (the rows
#: otherwise share the base config's optimizer, so a comparison stays fair)
METHOD_OPTIM_KEYS = {"name": ("dot",), "dot_delta": None}


@dataclass(frozen=True)
class MethodSpec:
    label: str  # the run folders' prefix and the report's row
    losses: dict[str, Any]
    source: str  # 'usual weights' or the YAML file
    optim: dict[str, Any] = field(default_factory=dict)  # DOT's keys only (METHOD_OPTIM_KEYS)


def method_spec(text: str, epochs: int | None) -> MethodSpec:
    """A method name (run at its usual weights, methods/usual.py) or a YAML file with a `losses:`
    section (its file name, without .yaml, is the label)."""
    if text.endswith((".yaml", ".yml")):
        path = Path(text)
        data = read_yaml(path)
        if not isinstance(data.get("losses"), dict) or not data["losses"]:
            raise ConfigError(f"--methods {text}: the file has no `losses:` section")
        extra = sorted(set(data) - {"losses", "optim"})
        optim = data.get("optim") or {}
        if not isinstance(optim, dict):
            raise ConfigError(f"--methods {text}: `optim:` must be a mapping")
        extra += [f"optim.{key}" for key in sorted(optim) if key not in METHOD_OPTIM_KEYS]
        extra += [f"optim.{key}: {value!r}" for key, value in sorted(optim.items())
                  if METHOD_OPTIM_KEYS.get(key) and value not in METHOD_OPTIM_KEYS[key]]
        if extra:
            raise ConfigError(f"--methods {text}: a method file holds only `losses:` (and `optim: {{name: dot, "
                              f"dot_delta}}`); it also sets {', '.join(extra)} (put those in the base config)")
        return MethodSpec(path.stem, data["losses"], str(path), dict(optim))
    try:
        return MethodSpec(text, usual_losses(text, epochs), "usual weights")
    except (ValueError, KDForgeError) as exc:  # not a distillation method, or no method of that name
        raise ConfigError(f"--methods: {exc}") from None


def _optim_section(base: dict[str, Any], spec: MethodSpec) -> dict[str, Any]:
    """{'optim': base's optimizer with the method file's DOT keys} where the file sets them, else nothing."""
    return {"optim": {**copy.deepcopy(base.get("optim") or {}), **spec.optim}} if spec.optim else {}


def plan_compare(base: dict[str, Any], methods: list[str], seeds: list[int], output_dir: str | Path,
                 teacher_model: str | None = None) -> list[PlannedRun]:
    """Every run of the comparison, in training order (seed by seed), each config checked and each
    existing folder checked to hold a run with the same settings: all before anything trains."""
    base = copy.deepcopy(base)
    refuse_decided(base, "comparison", "--methods, --teacher, --seeds, --out", keys=DECIDED)
    if not (base.get("student") or {}).get("model"):
        raise ConfigError("the base config needs student.model: the student every method trains")
    given_teacher = base.pop("teacher", None) or {}
    if teacher_model and given_teacher.get("checkpoint"):
        raise ConfigError("both --teacher and the base config's teacher.checkpoint given: choose one")
    if not teacher_model and not given_teacher.get("checkpoint"):
        raise ConfigError("no teacher: set teacher.checkpoint in the base config (one teacher for every seed) "
                          "or --teacher MODEL (a teacher trained here per seed)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: each seed once, at least one, got {seeds}")
    epochs = config_from_dict(base).schedule.epochs
    specs = [method_spec(m, epochs) for m in methods]
    labels = [s.label for s in specs]
    clash = sorted({x for x in labels if labels.count(x) > 1} | ({BASELINE, TEACHER} & set(labels)))
    if clash:
        raise ConfigError(f"--methods: {', '.join(clash)} given twice or clashing with a run kdforge compare "
                          f"makes itself ({BASELINE}, {TEACHER})")
    out = Path(output_dir)
    planned: list[PlannedRun] = []
    for seed in seeds:
        if teacher_model == base["student"]["model"]:  # self-distillation: the student alone is that teacher
            teacher = teacher_section(base, out / f"{BASELINE}-seed{seed}")
        elif teacher_model:
            teacher_base = {k: v for k, v in base.items() if k != "student"}
            data = plan_run(teacher_base, out, f"{TEACHER}-seed{seed}", seed=seed, losses={"ce": 1.0},
                            student={"model": teacher_model})
            planned.append(PlannedRun(TEACHER, seed, data))
            teacher = teacher_section(base, out / f"{TEACHER}-seed{seed}")
        else:
            teacher = given_teacher
        planned.append(PlannedRun(BASELINE, seed, plan_run(base, out, f"{BASELINE}-seed{seed}", seed=seed,
                                                           losses={"ce": 1.0})))
        for spec in specs:
            planned.append(PlannedRun(spec.label, seed, plan_run(base, out, f"{spec.label}-seed{seed}", seed=seed,
                                                                 losses=copy.deepcopy(spec.losses),
                                                                 teacher=copy.deepcopy(teacher),
                                                                 **_optim_section(base, spec))))
    for run in planned:
        try:
            check_folder(run.config)
        except ConfigError as exc:
            where = "" if run.label in (BASELINE, TEACHER) else f"--methods {run.label}: "
            raise ConfigError(f"{where}{exc}") from None
    return planned


def study_base(base: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`base` with a study's defaults for the runs under `folder` (`kdforge compare`, `kdforge tune`), each unless
    the base sets it: `train.teacher_store` at `folder`/teacher-store (or `null`, to go without; the study's
    logit-only runs then pay the teacher once per seed, `engine/teacher_store.py`) and, with trackers,
    `train.tracker_group` = the folder's name (one MLflow experiment / W&B group per study)."""
    base = copy.deepcopy(base)
    train = base.setdefault("train", {})
    train.setdefault("teacher_store", str(Path(folder) / "teacher-store"))
    if train.get("trackers") and not train.get("tracker_group"):
        train["tracker_group"] = Path(folder).resolve().name
    return base


def run_compare(base: dict[str, Any], methods: list[str], seeds: list[int], output_dir: str | Path,
                teacher_model: str | None = None, progress: bool = True, on_run=None,
                extra_figures: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train what is missing, then report. Returns write_report's result plus 'winner' (the label with the
    best mean validation top-1, or None without data.val_split) and 'planned' (the runs).
    `on_run(i, n, run, summary)` is called after each run (finished or reused)."""
    if progress is not None:
        base = copy.deepcopy(base)
        base.setdefault("train", {})["progress"] = progress
    base = study_base(base, Path(output_dir))
    planned = plan_compare(base, methods, seeds, output_dir, teacher_model)
    for i, run in enumerate(planned):
        reused = is_finished(run.config)
        summary = run_planned(run.config)
        if on_run is not None:
            on_run(i, len(planned), run, summary, reused)
    from kdforge.report import write_report

    out = Path(output_dir)
    folders = [run.run_dir for run in planned]
    result = write_report(folders, out=out / "report", baseline=BASELINE, extra_figures=extra_figures)
    train = base.get("train") or {}
    if train.get("trackers"):  # the report beside the study's runs in each tracker
        from kdforge.engine.hooks.trackers import log_report

        log_report(list(train["trackers"]), train.get("tracker_group"), out, out / "report")
    result["winner"] = validation_winner(result["groups"])
    result["planned"] = planned
    (out / "compare.json").write_text(json.dumps({"winner": result["winner"], "baseline": BASELINE,
                                                  "gains": result["gains"]}, indent=2, default=str) + "\n")
    return result


def validation_winner(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{'label', 'val_top1'} of the student group (teacher left out) with the highest mean validation
    top-1 at the last epoch; None where no run measured a validation split."""
    scored = []
    for record in records:
        if record["label"] == TEACHER:
            continue
        values = [v for v in record["metrics"]["val_top1_last"]["values"] if v is not None]
        if values:
            scored.append((mean_std(values)[0], record["label"]))
    if not scored:
        return None
    best, label = max(scored)
    return {"label": label, "val_top1": best}
