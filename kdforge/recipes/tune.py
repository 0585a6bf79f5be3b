"""`kdforge tune`: each method's settings searched on the validation split within a time budget (Optuna).

Per method, an Optuna study (TPE sampler, successive-halving pruner on each epoch's validation top-1) stored in
`OUT/tune.db` (SQLite), so the same command continues it after a crash or Ctrl-C. A trial is an ordinary engine
run of the base config (its first seed, its teacher) in `OUT/trials/<method>/trial-<n>` with the test split
switched off (`data.eval_split: ""`): the search reads the training and validation images only. The search
space (`search_space`): the loss weight on a log scale from a tenth to ten times the usual weight, T where the
method has one (1 to 10, log), and what the method declares in `Method.tunable`; the usual settings are the first
trial, so the best found is never below them on the validation split. Then the best settings of each method
are written as method files (`OUT/best/<method>_tuned.yaml`), and `kdforge compare` retrains them beside the usual
settings over the seeds and reports the test top-1 with paired intervals (`OUT/final/report/`).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError

#: the time one trial is expected to need at least, for refusing a budget that cannot fit one
MIN_TRIAL_S = 1.0
T_RANGE = (1.0, 10.0)
WEIGHT_SPAN = 10.0
TUNED = "_tuned"  # a tuned method file's suffix: its label in the final comparison


def parse_budget(text: str) -> float:
    """'2h', '90m', '45s', '1.5h' or a number of seconds -> seconds; a ConfigError naming --budget otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hms]?)\s*", str(text))
    if not match:
        raise ConfigError(f"--budget {text!r}: give a time such as 2h, 90m or 600s")
    value = float(match[1]) * {"h": 3600, "m": 60, "s": 1, "": 1}[match[2]]
    if value <= 0:
        raise ConfigError(f"--budget {text!r}: must be more than 0")
    return value


@dataclass(frozen=True)
class Dimension:
    """One searched setting: `name` in the method's loss entry, its range, log scale, integer, and usual value."""

    name: str
    low: float
    high: float
    log: bool
    integer: bool
    usual: float


def _as_entry(spec: Any) -> dict[str, Any]:
    return dict(spec) if isinstance(spec, dict) else {"weight": float(spec)}


def search_space(method: str, epochs: int) -> tuple[dict[str, Any], list[Dimension]]:
    """(the usual `losses:` of `method`, the dimensions searched in its entry)."""
    from kdforge.methods import method_class, method_params
    from kdforge.methods.usual import usual_losses

    usual = usual_losses(method, epochs)
    entry = _as_entry(usual[method])
    defaults = {p.name: p.default for p in method_params(method)}
    dims = []
    tunable = method_class(method).tunable
    weight = float(entry.get("weight", 1.0))
    if weight > 0:  # the method's own range where it declares one, else WEIGHT_SPAN times either side
        low, high = tunable.get("weight", (weight / WEIGHT_SPAN, weight * WEIGHT_SPAN))
        dims.append(Dimension("weight", min(low, weight), max(high, weight), True, False, weight))
    if "T" in defaults:
        t = float(entry.get("T", defaults["T"]))
        dims.append(Dimension("T", min(T_RANGE[0], t), max(T_RANGE[1], t), True, False, t))
    for name, (low, high) in tunable.items():
        if name not in defaults:  # the weight (above), or a name the method does not take
            continue
        value = entry.get(name, defaults[name])
        integer = isinstance(low, int) and isinstance(high, int)
        dims.append(Dimension(name, min(low, value), max(high, value), not integer, integer, value))
    return usual, dims


def trial_losses(usual: dict[str, Any], method: str, values: dict[str, float]) -> dict[str, Any]:
    """The `losses:` of a trial: the usual ones with `values` in the method's entry."""
    losses = copy.deepcopy(usual)
    losses[method] = {**_as_entry(usual[method]), **values}
    return losses


def _prune_hook(trial):
    """A loop hook (`engine/hooks/`) that reports each epoch's validation top-1 to `trial` and stops the run when
    Optuna prunes it. The run's last epoch (its schedule's, or `train.max_steps`') is never pruned: the run is over,
    and its result counts."""
    import optuna

    from kdforge.engine.hooks import Hook

    class PruneHook(Hook):
        name = "tune_pruning"

        def after_epoch(self, trainer, record: dict[str, Any]) -> None:
            value = record.get("val_top1")
            if value is None:
                return
            trial.report(float(value), int(trainer.state.epoch))
            if not trainer.stopping() and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {trainer.state.epoch}: validation top-1 {value:.2f}")

    return PruneHook()


def check_base(base: dict[str, Any]) -> None:
    """The search reads no test image: the base must hold a validation hold-out to choose on."""
    data = base.get("data") or {}
    if data.get("val_split") is None:
        raise ConfigError("kdforge tune chooses on a validation split: set data.val_split (e.g. 0.1) in the base "
                          "config; the test split is never read while searching")


def _trial_config(base: dict[str, Any], out: Path, method: str, number: int, seed: int, losses: dict[str, Any],
                  teacher: dict[str, Any]) -> dict[str, Any]:
    from kdforge.config import merge_configs
    from kdforge.recipes.runs import plan_run

    config = merge_configs(copy.deepcopy(base), {"data": {"eval_split": ""}, "train": {"eval_every": 1}})
    return plan_run(config, out / "trials" / method, f"trial-{number}", seed=seed, losses=losses,
                    teacher=copy.deepcopy(teacher))


def _settings_key(base: dict[str, Any], dims: list[Dimension], teacher: dict[str, Any], seed: int) -> str:
    """What a study's trials depend on: a second call in the same folder must ask for the same."""
    # where the teacher store lives changes no trial
    base = {**base, "train": {k: v for k, v in (base.get("train") or {}).items() if k != "teacher_store"}}
    return json.dumps({"base": base, "teacher": teacher, "seed": seed,
                       "space": [d.__dict__ for d in dims]}, sort_keys=True, default=str)


def open_study(storage: str, method: str, key: str, min_epochs: int = 1):
    """The method's study, created or continued; another search in the same folder is a ConfigError. Trials a
    killed call left running are marked failed. Successive halving (reduction 3) judges trials first after
    `min_epochs` epochs, then after 3x, 9x... as many: a larger `min_epochs` gives settings whose gain comes late
    (a large feature-loss weight) the time to show it, at the cost of fewer trials in the budget. Optuna ranks a
    trial against the others at the same rung, not epoch, so a study continues only with its own `min_epochs`."""
    import optuna
    from optuna.trial import TrialState

    sampler = optuna.samplers.TPESampler(seed=0)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=3)
    study = optuna.create_study(study_name=f"tune-{method}", storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", key)
        study.set_user_attr("min_epochs", min_epochs)
    elif saved != key:
        raise ConfigError(f"the tune folder already holds a search for {method} with other settings (base config, "
                          f"teacher, seed or search space): use another --out, or the same settings to continue it")
    first = study.user_attrs.get("min_epochs", 1)  # a study from before --min-epochs pruned from epoch 1
    if first != min_epochs:
        raise ConfigError(f"--min-epochs {min_epochs}: the study of {method} in this folder prunes from epoch {first}; "
                          f"continue it with --min-epochs {first}, or use another --out")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def spent_s(study) -> float:
    """Seconds the study's finished trials took (on any earlier call too)."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
               if t.datetime_complete is not None and t.datetime_start is not None)


def tune_method(study, base: dict[str, Any], out: Path, method: str, seed: int, usual: dict[str, Any],
                dims: list[Dimension], teacher: dict[str, Any], budget_s: float, trials: int | None,
                on_trial=None) -> None:
    """Run trials until the method's `budget_s` (counting earlier calls' trials) or `trials` trials are used."""
    import optuna

    from kdforge.config import config_from_dict
    from kdforge.engine import train_from_config

    if not study.trials:
        study.enqueue_trial({d.name: d.usual for d in dims})  # the usual settings first

    def objective(trial) -> float:
        values = {}
        for d in dims:
            if d.integer:
                values[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high))
            else:
                values[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        config = config_from_dict(_trial_config(base, out, method, trial.number, seed,
                                                trial_losses(usual, method, values), teacher))
        started = time.time()
        try:
            summary = train_from_config(config, overwrite=True,
                                        hooks=[_prune_hook(trial)])
        finally:
            if on_trial is not None:
                on_trial(method, trial.number, values, time.time() - started)
        value = summary.get("val_top1_last")
        if value is None or not math.isfinite(value):
            raise optuna.TrialPruned("no finite validation top-1")
        return float(value)

    left = budget_s - spent_s(study)
    done = len([t for t in study.trials if t.state.is_finished()])
    more = None if trials is None else max(0, trials - done)
    if left <= 0 or more == 0:
        return
    study.optimize(objective, n_trials=more, timeout=left, catch=(), gc_after_trial=True)


def best_method_file(study, method: str, usual: dict[str, Any], out: Path) -> Path:
    """OUT/best/<method>_tuned.yaml: a method file (`losses:` only) with the study's best settings."""
    import yaml

    path = out / "best" / f"{method}{TUNED}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    best = study.best_trial
    losses = trial_losses(usual, method, dict(best.params))
    header = (f"# kdforge tune: the best of {len(study.trials)} trials for {method} on the validation split "
              f"(trial {best.number}, val top-1 {best.value:.2f})\n")
    path.write_text(header + yaml.safe_dump({"losses": losses}, sort_keys=False))
    return path


def plot_importances(study, path: Path) -> Path | None:
    """How much each searched setting mattered to the validation top-1 (Optuna's fANOVA importances), as bars;
    None with fewer than two finished trials or one setting."""
    import matplotlib.pyplot as plt
    import optuna

    from kdforge.plots import save_figure

    if len([t for t in study.trials if t.value is not None]) < 2:
        return None
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every finished trial has the same settings
        return None
    if len(importances) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance for the validation top-1 (fANOVA)", title=study.study_name)
    return save_figure(fig, path)


def best_so_far(study) -> list[tuple[int, float]]:
    """(trial number, best validation top-1 so far) over the trials that ran to the end. A pruned trial's value is
    the last epoch it reported (Optuna keeps it), not a result: it never counts as the best."""
    best: list[tuple[int, float]] = []
    for t in study.trials:
        if t.state.name == "COMPLETE" and t.value is not None:
            best.append((t.number, max(best[-1][1], t.value) if best else t.value))
    return best


def plot_study(study, path: Path) -> Path | None:
    """Each trial's validation top-1 against the trial number (PNG): the trials that ran to the end, the pruned
    ones at the last epoch they reported, and the best so far (of the finished ones)."""
    import matplotlib.pyplot as plt

    from kdforge.plots import save_figure

    best = best_so_far(study)
    if not best:
        return None
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [t for t in study.trials if t.state.name == "PRUNED" and t.value is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if pruned:
        ax.plot([t.number for t in pruned], [t.value for t in pruned], "x", color="gray", alpha=0.6,
                label="pruned (its last epoch)")
    ax.plot([t.number for t in done], [t.value for t in done], "o", label="ran to the end")
    ax.step([n for n, _ in best] + [study.trials[-1].number], [v for _, v in best] + [best[-1][1]], where="post",
            label="best so far")
    low = min(t.value for t in done)  # trials pruned far lower (first epochs) fall below the picture
    ax.set_ylim(bottom=max(min(t.value for t in [*done, *pruned]) - 1.0, low - 10.0))
    ax.set(xlabel="trial", ylabel="validation top-1 (%)", title=study.study_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def run_tune(base: dict[str, Any], methods: list[str], seeds: list[int], out: str | Path, *,
             teacher_model: str | None, budget_s: float, trials: int | None = None, final: bool = True,
             progress: bool = False, on_trial=None, on_run=None, min_epochs: int = 1) -> dict[str, Any]:
    """Search each method (an equal share of `budget_s`), write the best settings, then (with `final`) compare
    them beside the usual settings over `seeds`. Returns {'best': {method: {...}}, 'files', 'compare'}."""
    from kdforge.config import config_from_dict, merge_configs
    from kdforge.methods import method_class
    from kdforge.recipes.compare import BASELINE, TEACHER, plan_compare, run_compare, study_base
    from kdforge.recipes.runs import run_planned, teacher_section

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is reported by `on_trial`
    check_base(base)
    out = Path(out)
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"--methods: each method once, at least one, got {methods}")
    for method in methods:
        if not method_class(method).needs_teacher:
            raise ConfigError(f"--methods {method}: not a distillation method (it needs no teacher)")
    if budget_s / len(methods) < MIN_TRIAL_S:
        raise ConfigError(f"--budget: {budget_s:g} s for {len(methods)} methods cannot fit one trial each")
    base = merge_configs(copy.deepcopy(base), {"train": {"progress": progress}})
    base = study_base(base, out)  # the trials and the final runs share its teacher store and tracker group
    planned = plan_compare(base, [], seeds, out / "final", teacher_model)  # checks the base; the teacher runs
    search_base = {k: v for k, v in base.items() if k != "teacher"}  # each trial gets the teacher found below
    epochs = config_from_dict(search_base).schedule.epochs
    if not 1 <= min_epochs <= epochs:
        raise ConfigError(f"--min-epochs {min_epochs}: must be between 1 and the schedule's {epochs} epochs")
    if teacher_model:
        own = teacher_model == (base.get("student") or {}).get("model")  # self-distillation: the student alone
        first_teacher = next(r for r in planned if r.label == (BASELINE if own else TEACHER) and r.seed == seeds[0])
        run_planned(first_teacher.config)
        teacher = teacher_section(base, first_teacher.run_dir)
    else:
        teacher = copy.deepcopy(base["teacher"])
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    best: dict[str, Any] = {}
    files = []
    pictures: dict[str, Path] = {}
    for method in methods:
        usual, dims = search_space(method, epochs)
        study = open_study(storage, method, _settings_key(search_base, dims, teacher, seeds[0]), min_epochs)
        tune_method(study, search_base, out, method, seeds[0], usual, dims, teacher, budget_s / len(methods),
                    trials, on_trial)
        finished = [t for t in study.trials if t.state.name == "COMPLETE"]  # a pruned one keeps a value too
        if not finished:
            raise ConfigError(f"--budget: no trial of {method} finished; give a larger budget")
        usual_value = next((t.value for t in finished if t.number == 0), None)
        tuned = best_method_file(study, method, usual, out)
        if study.best_trial.number != 0:  # the usual settings won: nothing new to train over the seeds
            files.append(tuned)
        for title, plotted in ((f"{method}: the search", plot_study(study, out / f"tune-{method}.png")),
                               (f"{method}: what mattered", plot_importances(study, out / f"tune-{method}-importance.png"))):
            if plotted is not None:
                pictures[title] = Path(plotted)
        best[method] = {"params": study.best_trial.params, "val_top1": study.best_value,
                        "usual_val_top1": usual_value, "trials": len(study.trials),
                        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
                        "seconds": spent_s(study), "file": str(tuned), "min_epochs": min_epochs,
                        "usual_was_best": study.best_trial.number == 0}
    (out / "tune.json").write_text(json.dumps(best, indent=2, default=str) + "\n")
    result: dict[str, Any] = {"best": best, "files": [str(f) for f in files], "compare": None}
    if final:
        result["compare"] = run_compare(base, [*methods, *map(str, files)], seeds, out / "final",
                                        teacher_model=teacher_model, progress=progress, on_run=on_run,
                                        extra_figures=pictures)
    return result
