"""NetGraft (Shen et al., AAAI 2021, arXiv 2012.04915) as a sequence of ordinary engine runs.

For every number of shots n and seed, on n label-free images per class (`data.few_shot`):

1. stage 1: one run per unit (``stage1-<unit>``): the unit alone grafted into the frozen teacher
   (model ``grafted``, ``graft: [unit]``), loss ``netgraft``, Adam, constant rate;
2. stage 2: one run per chain (``stage2-to-<unit>``): the first two units, then three, ... until
   the student replaces the teacher; each starts from the previous chain and the new unit's
   stage-1 weights (an init checkpoint the recipe writes under ``inits/``);
3. the final student (every unit, adapters folded: an ``adapted`` zoo model) is exported to
   ``student.pt`` and evaluated on the test split.

Model selection never looks at the test split: every stage hands on its last epoch
(``select="last"``), or the epoch best on a hold-out of `holdout` more images per class of the
training split (``select="holdout"``). Baselines with the same seeds: plain KD of the student
from scratch on the same n-shot images (label-free, ``kd-shots``); the control that isolates grafting,
KD on the same images of the student whose first `shared` blocks are the teacher's, copied and frozen
as in the grafted student, the rest from scratch and trained end to end (``kd-shots-shared``: the
grafted network with every unit grafted, from its initial weights, loss KD; with `shared` > 0); and
KD with labels on the full training set (``kd-full``). A finished run is reused and an interrupted one resumed, so the
recipe can be restarted after a crash; every run's settings and folder are checked first.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdforge.config import merge_configs
from kdforge.errors import ConfigError
from kdforge.recipes.digits import digits_base
from kdforge.recipes.runs import (check_folder, is_finished, plan_run, refuse_decided, run_dir_of, run_planned,
                                  teacher_phrase, teacher_section, teacher_which)
from kdforge.recipes.stats import format_mean_std, mean_std

#: the default shared settings on the built-in digits: plain VGGs (no BatchNorm in the convs) diverge with the
#: quickstart's SGD at 0.05, so the teacher and the baselines use Adam (teacher: 98.6% after 15 epochs, width 0.25)
DIGITS_BASE: dict[str, Any] = digits_base({"optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
                                           "schedule": {"epochs": 15, "warmup_epochs": 1.0}})


@dataclass
class GraftSchedule:
    """Epochs and rates of both stages, given for `reference_shots` images per class.

    With f = shots / reference_shots, the batch is ``max(1, int(reference_batch * f))`` and the
    stage-1 rates are multiplied by f (the paper's scaling); stage 2 keeps `lr_stage2`.
    `stage1_epochs` and `lr_blocks` have one value per unit (or one for all), `stage2_epochs`
    one per chain (units - 1, or one for all).
    """

    stage1_epochs: list[int] = field(default_factory=lambda: [100, 60, 60])
    stage2_epochs: list[int] = field(default_factory=lambda: [100, 100])
    lr_blocks: list[float] = field(default_factory=lambda: [2.5e-4])
    lr_adapters: float = 2.5e-3
    lr_stage2: float = 1e-4
    reference_shots: int = 10
    reference_batch: int = 64

    def per(self, values: list, count: int, name: str) -> list:
        if len(values) == 1:
            return list(values) * count
        if len(values) != count:
            raise ConfigError(f"{name}: give one value or {count} (one per {'unit' if 'stage2' not in name else 'chain'}),"
                              f" got {len(values)}")
        return list(values)

    def batch(self, shots: int) -> int:
        return max(1, int(self.reference_batch * shots / self.reference_shots))

    def scale(self, shots: int) -> float:
        return shots / self.reference_shots


#: the paper's schedules (public code), for 10 images per class
SCHEDULES = {
    "cifar10": GraftSchedule(),
    "cifar100": GraftSchedule(stage1_epochs=[1000, 200, 200], stage2_epochs=[150, 150],
                              lr_blocks=[2.5e-4, 1e-3, 1e-3], lr_adapters=1e-3),
}


@dataclass
class Stage2Run:
    """One stage-2 run: its config, the units it grafts (the chain so far) and the file it starts from."""

    config: dict[str, Any]
    chain: list[str]
    init: Path


@dataclass
class GraftGroup:
    """The runs of one (shots, seed): stage 1 per unit, stage 2 in order, and the KD baseline on the same images."""

    folder: Path
    stage1: dict[str, dict[str, Any]]  # unit -> its run's config
    stage2: list[Stage2Run]
    net: Any  # the grafted network with every unit grafted (its unit keys, folding)
    kd_shots: dict[str, Any] | None  # None without baselines
    kd_shots_shared: dict[str, Any] | None = None  # the same with the teacher's shared blocks (shared > 0)


@dataclass
class NetGraftPlan:
    """Everything `run_netgraft_pipeline` will train, checked before the first run."""

    groups: dict[tuple[int, int], GraftGroup]  # (shots, seed) -> its runs
    kd_full: dict[int, dict[str, Any]]  # seed -> the full-data KD baseline's config (none without baselines)
    units: list[str]
    which: str  # the checkpoint every stage continues from: 'last' or 'best' (on the hold-out)
    schedule: GraftSchedule
    teacher: str
    student: str
    teacher_phrase: str
    params: int  # the folded student's parameters
    kd_epochs: int


def schedule_for_teacher(teacher: str | Path, base: dict[str, Any]) -> str:
    """The paper's schedule for the teacher's label space: 'cifar100' for 100 or more classes, else 'cifar10'."""
    from kdforge.engine.checkpoint import load_checkpoint

    classes = (load_checkpoint(teacher, teacher_which(base))["model"] or {}).get("num_classes") or 0
    return "cifar100" if classes >= 100 else "cifar10"


def run_netgraft_pipeline(teacher: str | Path, *, base: dict[str, Any], shots: Sequence[int] = (1, 5, 10),
                          seeds: Sequence[int] = (0, 1, 2), output_dir: str | Path = "runs/netgraft",
                          student: str = "vgg16_nobn_thin", student_options: dict | None = None,
                          shared: int = 3, teacher_blocks: Sequence[str] | None = None,
                          student_blocks: Sequence[str] | None = None, schedule: GraftSchedule | None = None,
                          select: str = "last", holdout: int = 1, baselines: bool = True,
                          kd_epochs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train everything; return {'rows', 'table'} and write results.md / results.json to `output_dir`."""
    output_dir = Path(output_dir)
    base = merge_configs(copy.deepcopy(base), {"train": {"progress": progress}})
    plan = plan_netgraft(teacher, base=base, shots=shots, seeds=seeds, output_dir=output_dir, student=student,
                         student_options=student_options, shared=shared, teacher_blocks=teacher_blocks,
                         student_blocks=student_blocks, schedule=schedule or GraftSchedule(), select=select,
                         holdout=holdout, baselines=baselines, kd_epochs=kd_epochs)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple, dict] = {}
    for (n, seed), group in plan.groups.items():
        results[("netgraft", n, seed)] = _run_group(group, plan.which)
        for kind, data in (("kd-shots", group.kd_shots), ("kd-shots-shared", group.kd_shots_shared)):
            if data is not None:
                run_planned(data)
                results[(kind, n, seed)] = _test_top1(data, plan.which)
    for seed, data in plan.kd_full.items():
        run_planned(data)
        results[("kd-full", None, seed)] = _test_top1(data, "last")
    rows = _rows(plan, results)
    table = _markdown(rows, plan)
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "results.json").write_text(json.dumps(
        {"teacher": str(teacher), "select": select, "schedule": asdict(plan.schedule), "rows": rows}, indent=2) + "\n")
    return {"rows": rows, "table": table}


def train_teacher(base: dict[str, Any], model: str, options: dict, output_dir: str | Path,
                  progress: bool = True) -> str:
    """Train (or reuse, or resume) the teacher `model` with CE on the base config's data; returns its run folder."""
    refuse_decided(base, "recipe", "--teacher-model, --width, --seeds, --out")
    data = plan_run(merge_configs(copy.deepcopy(base), {"train": {"progress": progress}}), Path(output_dir),
                    "teacher", student={"model": model, "options": dict(options)}, losses={"ce": 1.0})
    run_planned(data)
    return str(run_dir_of(data))


def plan_netgraft(teacher: str | Path, *, base: dict[str, Any], shots: Sequence[int], seeds: Sequence[int],
                  output_dir: Path, student: str, student_options: dict | None, shared: int,
                  teacher_blocks: Sequence[str] | None, student_blocks: Sequence[str] | None,
                  schedule: GraftSchedule, select: str, holdout: int, baselines: bool,
                  kd_epochs: int | None) -> NetGraftPlan:
    """Check everything and plan every run (no training); raises ConfigError on any mistake."""
    from kdforge.engine.checkpoint import load_checkpoint
    from kdforge.models import build_model

    refuse_decided(base, "recipe", "--teacher, --student, --shots, --seeds, --out")
    for what, values in (("--seeds", seeds), ("--shots", shots)):
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"{what}: each value once, got {list(values)}")
    if select not in ("last", "holdout"):
        raise ConfigError(f"--select: 'last' or 'holdout', got {select!r}")
    if select == "holdout" and holdout < 1:
        raise ConfigError(f"--holdout: selecting on a hold-out needs at least 1 image per class, got {holdout}")
    if any(n < 1 for n in shots):
        raise ConfigError(f"--shots: positive numbers of images per class, got {list(shots)}")
    record = load_checkpoint(teacher, teacher_which(base))["model"] or {}
    if not record.get("name"):
        raise ConfigError(f"--teacher {teacher}: the checkpoint does not record its model")
    options = {"teacher": record["name"], "teacher_options": dict(record.get("options") or {}),
               "student": student, "student_options": dict(student_options or {}), "shared": shared,
               "teacher_blocks": list(teacher_blocks) if teacher_blocks else None,
               "student_blocks": list(student_blocks) if student_blocks else None}
    net = build_model("grafted", num_classes=record["num_classes"], in_channels=record["in_channels"], **options)
    units = net.units
    epochs1 = schedule.per(schedule.stage1_epochs, len(units), "stage1_epochs")
    lrs1 = schedule.per(schedule.lr_blocks, len(units), "lr_blocks")
    epochs2 = schedule.per(schedule.stage2_epochs, len(units) - 1, "stage2_epochs") if len(units) > 1 else []
    which = "best" if select == "holdout" else "last"
    kd_epochs = kd_epochs or sum(epochs1) + sum(epochs2)
    teacher = str(teacher)
    groups, kd_full = {}, {}
    for n in shots:
        for seed in seeds:
            folder = output_dir / f"shots{n}" / f"seed{seed}"
            few_shot = {"shots": n, "seed": seed, "holdout": holdout if select == "holdout" else 0, "labels": False}
            data = merge_configs(copy.deepcopy(base.get("data", {})),
                                 {"batch_size": schedule.batch(n), "few_shot": few_shot})
            f = schedule.scale(n)
            stage1 = {}
            for i, unit in enumerate(units):
                groups_lr = {f"{side}.{net.unit_key(unit)}.*": schedule.lr_adapters * f
                             for side, adapters in (("s2t", net.s2t), ("t2s", net.t2s)) if net.unit_key(unit) in adapters}
                stage1[unit] = _graft_run(base, folder, f"stage1-{unit}", seed, data, options, [unit], None,
                                          teacher, lrs1[i] * f, groups_lr, epochs1[i])
            stage2 = []
            for j in range(1, len(units)):
                chain = units[:j + 1]
                init = folder / "inits" / f"to-{chain[-1]}.pt"
                stage2.append(Stage2Run(_graft_run(base, folder, f"stage2-to-{chain[-1]}", seed, data, options, chain,
                                                   str(init), teacher, schedule.lr_stage2, {}, epochs2[j - 1]),
                                        chain, init))
            group = GraftGroup(folder, stage1, stage2, net, None)
            if baselines:
                plain = {"model": student, "options": dict(student_options or {})}
                group.kd_shots = kd_shots_run(base, folder, "kd-shots", seed, data, plain, teacher, kd_epochs)
                if shared:
                    group.kd_shots_shared = kd_shots_run(base, folder, "kd-shots-shared", seed, data,
                                                         shared_student(options, units), teacher, kd_epochs)
            groups[(n, seed)] = group
    if baselines:
        for seed in seeds:
            kd_full[seed] = plan_run(base, output_dir / "kd-full", f"seed{seed}", seed=seed,
                                     student={"model": student, "options": dict(student_options or {})},
                                     teacher=teacher_section(base, teacher),
                                     losses={"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}})
    for group in groups.values():
        for data in [*group.stage1.values(), *(run.config for run in group.stage2)]:
            check_folder(data)
        for data in (group.kd_shots, group.kd_shots_shared):
            if data is not None:
                check_folder(data)
    for data in kd_full.values():
        check_folder(data)
    return NetGraftPlan(groups, kd_full, units, which, schedule, teacher, student, teacher_phrase(base),
                        _params(net), kd_epochs)


def kd_shots_run(base: dict[str, Any], folder: Path, name: str, seed: int, data: dict, student: dict,
                 teacher: str, epochs: int) -> dict[str, Any]:
    """A label-free KD baseline on the n-shot images `data`: `student` from its initial weights, KD (T = 4) from
    the teacher, the base's optimizer and schedule over `epochs` (NetGraft's two stages' epochs together)."""
    return plan_run(base, folder, name, seed=seed, data=data, train=_train_section(base, epochs), student=student,
                    teacher=teacher_section(base, teacher), losses={"kd": {"weight": 1.0, "T": 4.0}},
                    schedule=merge_configs(copy.deepcopy(base.get("schedule", {})), {"epochs": epochs}))


def shared_student(options: dict[str, Any], units: list[str]) -> dict[str, Any]:
    """The `student:` section of the grafting control: the grafted network with every unit grafted, i.e. the
    student whose first `shared` blocks are the teacher's (copied, frozen), the rest from their initial
    weights; exported, its adapters fold away as NetGraft's student's do."""
    return {"model": "grafted", "options": {**options, "graft": list(units)}}


def _train_section(base: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The base's `train` settings, evaluating every tenth of the run's epochs unless the base says otherwise."""
    return merge_configs({"eval_every": max(1, epochs // 10)}, copy.deepcopy(base.get("train", {})))


def _graft_run(base, folder: Path, name: str, seed: int, data: dict, options: dict, graft: list[str],
               init: str | None, teacher: str, lr: float, lr_groups: dict, epochs: int) -> dict[str, Any]:
    train = _train_section(base, epochs)
    student = {"model": "grafted", "options": {**options, "graft": graft}}
    if init:
        student["checkpoint"] = init
    return plan_run(base, folder, name, seed=seed, data=data, student=student, teacher=teacher_section(base, teacher),
                    losses={"netgraft": 1.0}, train=train,
                    optim={"name": "adam", "lr": lr, "weight_decay": 0.0, "lr_groups": lr_groups},
                    schedule={"name": "constant", "epochs": epochs, "warmup_epochs": 0.0})


def _run_group(group: GraftGroup, which: str) -> dict[str, Any]:
    """Stage 1, stage 2 and the export of one (shots, seed); returns the final student's test metrics."""
    from kdforge.deploy.export import export_model

    for data in group.stage1.values():
        run_planned(data)
    units = list(group.stage1)
    previous = run_dir_of(group.stage1[units[0]])
    for run in group.stage2:
        if not is_finished(run.config) and not (run_dir_of(run.config) / "checkpoints" / "last.pt").is_file():
            _write_init(group.net, previous, which, run_dir_of(group.stage1[run.chain[-1]]), run.chain[-1], run.init)
        run_planned(run.config)
        previous = run_dir_of(run.config)
    out = group.folder / "student.pt"
    export_model(previous, which=which, out=out)
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    metrics = evaluate_checkpoint(out, split=None)
    return {"top1": metrics["top1"], "student": str(out)}


def _write_init(net, previous: Path, which: str, unit_run: Path, unit: str, out: Path) -> None:
    """The start of a stage-2 run: the previous run's weights with `unit` from its stage-1 run."""
    from kdforge.engine.checkpoint import atomic_save, load_checkpoint

    ckpt = load_checkpoint(previous, which)
    state = dict(ckpt["student"])
    unit_state = load_checkpoint(unit_run, which)["student"]
    for key in net.unit_state_keys(unit):
        state[key] = unit_state[key]
    atomic_save({"format": ckpt.get("format"), "model": ckpt["model"], "student": state,
                 "config": ckpt.get("config"), "data": ckpt.get("data"),
                 "init_from": {"chain": str(previous), "unit": unit, "unit_run": str(unit_run), "which": which}}, out)


def _test_top1(data: dict, which: str) -> dict[str, Any]:
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    return {"top1": evaluate_checkpoint(run_dir_of(data), which, split=data.get("data", {}).get("eval_split"))["top1"]}


def _params(net) -> int:
    """Parameters of the finished student (`net` is built with every unit grafted)."""
    return sum(p.numel() for p in net.fold().parameters())


def _rows(plan: NetGraftPlan, results: dict) -> list[dict[str, Any]]:
    seeds = sorted({seed for (_, _, seed) in results})
    rows = []
    shots = sorted({n for (_, n, _) in results if n is not None})
    for n in shots:
        for kind in ("netgraft", "kd-shots", "kd-shots-shared"):
            have = [s for s in seeds if (kind, n, s) in results]
            values = [results[(kind, n, s)]["top1"] for s in have]
            if values:
                mean, std = mean_std(values)
                rows.append({"method": kind, "shots": n, "top1": values, "seeds": have, "mean": mean, "std": std})
    have = [s for s in seeds if ("kd-full", None, s) in results]
    full = [results[("kd-full", None, s)]["top1"] for s in have]
    if full:
        mean, std = mean_std(full)
        rows.append({"method": "kd-full", "shots": None, "top1": full, "seeds": have, "mean": mean, "std": std})
    return rows


def _markdown(rows: list[dict], plan: NetGraftPlan) -> str:
    labels = {"netgraft": "NetGraft (label-free)", "kd-shots": "KD, same n-shot images (label-free)",
              "kd-shots-shared": "KD, same images, teacher's first blocks copied and frozen (label-free)",
              "kd-full": "KD + CE, full training set"}
    lines = [f"student {plan.student} ({plan.params:,} params after folding), teacher {plan.teacher}; "
             f"test top-1 of the {'last epoch' if plan.which == 'last' else 'epoch best on the hold-out'} "
             f"of every stage, mean ± std over seeds; teacher checkpoint: {plan.teacher_phrase}",
             "", "| method | images per class | test top-1 (%) | per seed |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {labels[row['method']]} | {row['shots'] if row['shots'] is not None else 'all'} | "
                     f"{format_mean_std(row['top1'])} | {', '.join(f'{v:.2f}' for v in row['top1'])} |")
    return "\n".join(lines)


__all__ = ["DIGITS_BASE", "GraftGroup", "GraftSchedule", "NetGraftPlan", "SCHEDULES", "Stage2Run", "kd_shots_run",
           "plan_netgraft", "run_netgraft_pipeline", "schedule_for_teacher", "shared_student", "train_teacher"]
