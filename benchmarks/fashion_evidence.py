"""The five claims as their papers test them (issue 36): strong teachers, the papers' losses, paired seeds, a rule.

Each experiment is a list of ordinary kdforge runs on the standard table's data (benchmarks/fashion_table.py:
Fashion-MNIST, 600 training images per class after a 5 % validation hold-out, the full test split, the
table's optimiser, augmentation and 10-epoch cosine schedule for the students unless the experiment says
otherwise) and a list of comparisons fixed here, before any run: "B beats A" is decided by the paired
difference B - A over the seeds both have, its 95 % Student-t interval, and the verdict "higher" (interval
above 0), "lower" (below 0) or "not resolved" (`kdforge.recipes.stats.paired_difference`, the rule
`kdforge report --baseline` prints).

Teachers are trained longer than the students where a short schedule leaves them weak, chosen on the
validation hold-out (best.pt), and kept as slim checkpoints; the table states the teacher's top-1 against
the student trained alone. Nothing is selected on the test split.

    python benchmarks/fashion_evidence.py --experiment pursuhint  # CCA vs stage-end hints, CE + KD + hint, 5 seeds
    python benchmarks/fashion_evidence.py --experiment ddnn       # EKD vs each depth alone, and the ablation
    python benchmarks/fashion_evidence.py --experiment sftn       # standard / SFTN / SFTN-detached, 30 epochs
    python benchmarks/fashion_evidence.py --experiment netgraft   # the control: KD with the teacher's blocks
    python benchmarks/fashion_evidence.py --experiment rtk        # RTK vs AFD (runs: fashion_claims.py --claim rtk)
    python benchmarks/fashion_evidence.py --experiment ddnn --seeds 5 6      # more paired seeds
    python benchmarks/fashion_evidence.py --experiment sftn --table-only     # the table from what is finished

Every finished run is copied to benchmarks/results/<folder>/ as soon as it finishes (summary, config, log;
teachers as teacher.pt) and put back at the start, so a stopped call, a later session on a fresh machine
or a GPU machine continues the same table; runs go seed by seed, so a stop leaves whole seeds. <folder> is
evidence-<experiment>, except sftn (fashion-sftn-e30) and rtk (fashion-rtk), which extend issue 21's runs
of the same settings. Runs of the same name and settings already kept elsewhere (REUSE_FROM) are reused.
The table goes to <folder>/evidence.md and evidence.json. On a 2-core machine run two experiments at a
time with OMP_NUM_THREADS=1 each.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import date
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


if str(HERE) not in sys.path:  # the sibling scripts, also when this one is loaded by file (tests)
    sys.path.insert(0, str(HERE))
import fashion_table as TABLE  # noqa: E402


@dataclass
class Run:
    """One run of an experiment: its label, seed, config, and the table rows it gives (`read`: summary ->
    {row label: top-1}; default {label: top1_last})."""

    label: str
    seed: int | None
    config: dict
    read: Callable[[dict], dict[str, float]] | None = None

    def rows(self, summary: dict) -> dict[str, float]:
        return self.read(summary) if self.read else {self.label: summary["top1_last"]}


@dataclass
class Experiment:
    """What an experiment trains (`runs`, in training order) and what it decides (`comparisons`: (baseline row,
    row, what is claimed)); `teacher` and `alone`: the rows of the teacher and of the student trained alone."""

    title: str
    claim: str
    runs: list[Run] = field(default_factory=list)
    comparisons: list[tuple[str, str, str]] = field(default_factory=list)
    teacher: str | None = None
    alone: str | None = None
    #: rows measured elsewhere and joined to this table: {row: {seed: top-1}} and where they come from
    joined: dict[str, dict[int, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def student_base(base: dict) -> dict:
    return {k: v for k, v in copy.deepcopy(base).items() if k != "student"}


# ---------------------------------------------------------------- PURSUhInT
PURSUHINT_TEACHER, PURSUHINT_STUDENT = "resnet56", "resnet8"
#: the teacher trains this many times the students' epochs (40 at the table's 10)
PURSUHINT_TEACHER_FACTOR = 4
#: CE + KD (T = 4) + hint, as the paper and configs/cifar100/hints/*.yaml. FitNet: RepDistiller's single hint
#: at 100 becomes 100 / K per pair over our K = 3 pairs (the same total scale); AT: 1000 per pair, summed
#: over the pairs as RepDistiller's AT sums its groups
PURSUHINT_HINT_LOSSES = {"fitnet": 100.0 / 3, "at": 1000.0}
PURSUHINT_HINTS = {"cca": {"select": "auto", "metric": "cca"}, "stage_ends": {"select": "stage_ends"}}


def experiment_pursuhint(base: dict, runs: Path, seeds: list[int]) -> Experiment:
    """PURSUhInT (Keser et al., ESWA 2023): hints at the centres of the teacher's layer clusters (CCA, K = 3)
    beat the teacher's stage ends for the same hint method, all else equal. One resnet56 teacher (seed 0)
    trained 40 epochs, 4x the students' schedule, so that it clearly beats the student alone; students resnet8,
    CE + KD + FitNet / AT; KD alone and the student alone as references."""
    from kdforge.recipes.runs import plan_run, teacher_section

    exp = Experiment("PURSUhInT: clustered (CCA) vs stage-end hints, resnet56 (40 epochs) -> resnet8",
                     "hints at cluster centres beat stage-end hints for the same method (Keser et al. 2023)",
                     teacher="teacher", alone="alone")
    teacher_cfg = student_base(base)
    teacher_epochs = PURSUHINT_TEACHER_FACTOR * base["schedule"]["epochs"]
    teacher_cfg["schedule"]["epochs"] = teacher_epochs
    name = f"teacher-{PURSUHINT_TEACHER}-e{teacher_epochs}"
    exp.runs.append(Run("teacher", 0, plan_run(teacher_cfg, runs, name, seed=0, student={"model": PURSUHINT_TEACHER},
                                               losses={"ce": 1.0})))
    teacher = teacher_section(base, runs / name)
    kd = {"weight": 1.0, "T": 4.0}
    for seed in seeds:
        student = {"model": PURSUHINT_STUDENT}
        exp.runs.append(Run("alone", seed, plan_run(student_base(base), runs, f"alone-seed{seed}", seed=seed,
                                                    student=student, losses={"ce": 1.0})))
        exp.runs.append(Run("kd", seed, plan_run(student_base(base), runs, f"kd-seed{seed}", seed=seed,
                                                 student=student, losses={"ce": 1.0, "kd": dict(kd)},
                                                 teacher=dict(teacher))))
        for method, weight in PURSUHINT_HINT_LOSSES.items():
            for variant, hints in PURSUHINT_HINTS.items():
                label = f"kd+{method}-{variant}"
                exp.runs.append(Run(label, seed, plan_run(
                    student_base(base), runs, f"{label}-seed{seed}", seed=seed, student=student,
                    losses={"ce": 1.0, "kd": dict(kd), method: weight}, teacher=dict(teacher), hints=dict(hints))))
    for method in PURSUHINT_HINT_LOSSES:
        exp.comparisons.append((f"kd+{method}-stage_ends", f"kd+{method}-cca", "clustered hints beat stage ends"))
    for method in PURSUHINT_HINT_LOSSES:
        exp.comparisons.append(("kd", f"kd+{method}-cca", "(reference) the clustered hint adds to KD"))
    return exp


# ---------------------------------------------------------------- DDNN + EKD
DDNN_FULL, DDNN_SUBNETS = "resnet20", ["resnet14", "resnet8"]
#: the default and the ablation the issue asks for; K = 2 sub-nets; every variant bn switchable unless named
DDNN_VARIANTS = {
    "ekd": ({}, "switchable"),                                               # kdforge ddnn's defaults (T = 1)
    "no-distil": ({"lambda_kl": 0.0, "lambda_at": 0.0}, "switchable"),       # (a) joint CE training only
    "subnet-ce-off": ({"lambda_ce": 0.0}, "switchable"),                     # (b) sub-nets learn from the full net only
    "per-k": ({"lambda_ce": 0.5, "lambda_kl": 0.5, "lambda_at": 0.5}, "switchable"),  # (c) sub-net terms x 1/K
    "t4": ({"T": 4.0}, "switchable"),                                        # (d) T = 4
    "kl-only": ({"lambda_at": 0.0}, "switchable"),                           # which term costs the full net?
    "at-only": ({"lambda_kl": 0.0}, "switchable"),
    "bn-recalibrate": ({}, "recalibrate"),
    "bn-shared": ({}, "shared"),
}
#: variants the issue asks for "once": trained at seed 0 only (their rows then have one seed and no interval)
DDNN_ONCE, DDNN_ONCE_SEED = {"bn-recalibrate", "bn-shared"}, 0
#: the diagnosis of the full net's loss (the distillation terms one at a time): seeds 0-2 only
DDNN_DIAGNOSIS, DDNN_DIAGNOSIS_SEEDS = {"kl-only", "at-only"}, {0, 1, 2}


def experiment_ddnn(base: dict, runs: Path, seeds: list[int]) -> Experiment:
    """DDNN + EKD (Zhao et al. 2021): every sub-net of one EKD-trained depth-dynamic resnet20 (holding resnet14 and
    resnet8) beats the same depth trained alone, and the full net is no worse; the ablation says whether the
    distillation terms do anything (their ratio to CE is logged per path). Seed by seed: the depths alone, then
    every variant."""
    from kdforge.recipes.ddnn import last_epoch_ratios, plan_ddnn

    exp = Experiment("DDNN + EKD: one resnet20 holding resnet14 and resnet8, vs each depth alone; ablation",
                     "EKD sub-nets beat the same depths trained alone; the full net is no worse (Zhao et al. 2021)")
    for seed in seeds:
        for variant, (ekd, bn) in DDNN_VARIANTS.items():
            if (variant in DDNN_ONCE and seed != DDNN_ONCE_SEED) or \
                    (variant in DDNN_DIAGNOSIS and seed not in DDNN_DIAGNOSIS_SEEDS):
                continue
            plan = plan_ddnn(DDNN_FULL, DDNN_SUBNETS, base=student_base(base), seeds=[seed], output_dir=runs / variant,
                             bn=bn, ekd=ekd, independent=variant == "ekd")
            for run in plan.runs:
                if run.label == "ekd":
                    def read(summary, variant=variant):
                        rows = {f"{variant} [{path}]": v["top1_last"] for path, v in summary["paths"].items()}
                        for path, ratio in last_epoch_ratios(summary["run_dir"]).items():
                            rows[f"{variant} [{path}] distil/CE"] = ratio
                        return rows
                    exp.runs.append(Run(variant, seed, run.config, read))
                else:
                    exp.runs.append(Run(f"alone {run.label}", seed, run.config))
    for path in [DDNN_FULL, *DDNN_SUBNETS]:
        exp.comparisons.append((f"alone {path}", f"ekd [{path}]", "EKD path beats (sub-nets) / matches (full) the "
                                                                   "depth alone"))
    for variant in DDNN_VARIANTS:
        if variant != "ekd":
            for path in [DDNN_FULL, *DDNN_SUBNETS]:
                exp.comparisons.append((f"ekd [{path}]", f"{variant} [{path}]", "ablation vs the default"))
    for variant in ("kl-only", "at-only", "ekd"):  # joint CE training plus one distillation term, or both
        exp.comparisons.append((f"no-distil [{DDNN_FULL}]", f"{variant} [{DDNN_FULL}]",
                                "(diagnosis) what the distillation terms cost the full net"))
    for path in DDNN_SUBNETS:
        exp.comparisons.append((f"alone {path}", f"t4 [{path}]", "EKD at T = 4 beats the depth alone"))
    exp.notes.append("Every run trains 10 epochs (the table's schedule); no teacher: the full net teaches online.")
    return exp


# ---------------------------------------------------------------- SFTN
SFTN_TEACHER, SFTN_STUDENT = "resnet20", "resnet8"
SFTN_FACTOR = 3  # teachers and students train 3x the table's epochs (30 at its 10: issue 21's 30-epoch runs)
SFTN_KINDS = {"standard": {"ce": 1.0}, "sftn": {"sftn": {"weight": 1.0, "student": SFTN_STUDENT}},
              "sftn-detached": {"sftn": {"weight": 1.0, "student": SFTN_STUDENT, "detach_features": True}}}
SFTN_METHODS = ["kd", "fitnet"]


#: the row suffix of a KD student's T^2 KL to its teacher (training split, last epoch: the logged KD term / its weight)
KL_ROW = "T²·KL to teacher"


def last_epoch_log(run_dir: str | Path, key: str) -> float | None:
    """`key` of the last epoch record in a run's log.jsonl; None without one."""
    from kdforge.engine.logger import read_log

    if not (Path(run_dir) / "log.jsonl").is_file():
        return None
    epochs = [r for r in read_log(run_dir, "epoch") if key in r]
    return epochs[-1][key] if epochs else None


def _kd_student_read(label: str, losses: dict) -> Callable[[dict], dict[str, float]]:
    """A KD student's rows: its top-1, and how closely it imitates its teacher at the end of training: the logged
    KD term of the last epoch over the KD weight, i.e. T^2 KL(teacher || student) on the (augmented) training
    images (SFTN's claim is that students match a student-friendly teacher more closely)."""
    def read(summary: dict) -> dict[str, float]:
        rows = {label: summary["top1_last"]}
        term = last_epoch_log(summary["run_dir"], "train_kd")
        if term is not None:
            rows[f"{label} {KL_ROW}"] = term / float(losses["kd"]["weight"])
        return rows
    return read


def experiment_sftn(base: dict, runs: Path, seeds: list[int]) -> Experiment:
    """SFTN (Park et al., NeurIPS 2021): students of a student-friendly teacher (trained with resnet8 branches) beat
    students of a standard teacher. Three teachers per seed, 30 epochs each (teachers and students): standard, SFTN
    as kdforge trains it by default, and SFTN with the teacher's features detached before the branches (the
    public implementation's form); students KD and FitNet at their usual weights. Each KD student also gives how
    closely it imitates its teacher (`KL_ROW`), the mechanism the paper credits; that comparison was added after
    seeds 0-3 had run, as a diagnostic beside the claim, not as the claim."""
    from kdforge.methods.usual import usual_losses
    from kdforge.recipes.runs import plan_run, teacher_section

    epochs = SFTN_FACTOR * base["schedule"]["epochs"]
    exp = Experiment(f"SFTN: students of standard / SFTN / SFTN-detached {SFTN_TEACHER} teachers, {epochs} epochs",
                     "students of an SFTN teacher beat students of a standard teacher (Park et al. 2021)",
                     teacher="standard teacher", alone="alone")
    cfg = student_base(base)
    cfg["schedule"]["epochs"] = epochs
    for seed in seeds:
        exp.runs.append(Run("alone", seed, plan_run(cfg, runs, f"alone-{SFTN_STUDENT}-seed{seed}", seed=seed,
                                                    student={"model": SFTN_STUDENT}, losses={"ce": 1.0})))
        for kind, losses in SFTN_KINDS.items():
            teacher = plan_run(cfg, runs, f"{kind}-teacher-seed{seed}", seed=seed, student={"model": SFTN_TEACHER},
                               losses=copy.deepcopy(losses))
            exp.runs.append(Run(f"{kind} teacher", seed, teacher))
            for method in SFTN_METHODS:
                student_losses = usual_losses(method, epochs)
                exp.runs.append(Run(f"{kind} {method}", seed, plan_run(
                    cfg, runs, f"{kind}-{method}-seed{seed}", seed=seed, student={"model": SFTN_STUDENT},
                    losses=student_losses, teacher=teacher_section(cfg, folder_of(teacher))),
                    _kd_student_read(f"{kind} {method}", student_losses) if method == "kd" else None))
    for method in SFTN_METHODS:
        for kind in ("sftn", "sftn-detached"):
            exp.comparisons.append((f"standard {method}", f"{kind} {method}", "students of the SFTN teacher are better"))
    for kind in ("sftn", "sftn-detached"):  # the paper's mechanism: a student imitates an SFTN teacher more closely
        exp.comparisons.append((f"standard kd {KL_ROW}", f"{kind} kd {KL_ROW}",
                                "(mechanism) the KD student is closer to an SFTN teacher: lower"))
    for kind in ("sftn", "sftn-detached"):
        exp.comparisons.append(("standard teacher", f"{kind} teacher", "(reference) the SFTN teacher's own top-1"))
    return exp


# ---------------------------------------------------------------- NetGraft
NETGRAFT_KEPT = HERE / "results" / "fashion-netgraft"
NETGRAFT_SHOTS = (1, 5, 10)


def experiment_netgraft(base: dict, runs: Path, seeds: list[int]) -> Experiment:
    """NetGraft (Shen et al., AAAI 2021): the control that isolates grafting. The grafted student keeps the teacher's
    first 3 blocks (copied, frozen); the KD baseline trained the whole student from scratch. The control: KD on the
    same label-free shots, the student starting with the same copied, frozen teacher blocks (the rest from scratch,
    trained end to end, NetGraft's two stages' epochs), the same teacher (the committed one of issue 21). NetGraft's
    and plain KD's numbers are joined from benchmarks/results/fashion-netgraft/results.json (same seeds, shots)."""
    from kdforge.config import merge_configs
    from kdforge.recipes.netgraft import SCHEDULES, kd_shots_run, shared_student

    import fashion_claims as claims
    base = student_base(base)
    base["data"]["options"] = {"image_size": 32}
    base["optim"] = dict(claims.NETGRAFT_OPTIM)
    TABLE.restore(NETGRAFT_KEPT, runs)  # the teacher, as a slim checkpoint
    teacher = str(runs / "teacher")
    width = {"width": claims.NETGRAFT_WIDTH}
    options = {"teacher": "vgg16_nobn", "teacher_options": width, "student": "vgg16_nobn_thin",
               "student_options": width, "shared": 3, "teacher_blocks": None, "student_blocks": None}
    schedule = SCHEDULES["cifar10"]
    epochs = sum(schedule.stage1_epochs) + sum(schedule.stage2_epochs)
    units = ["layer4", "layer5", "head"]
    exp = Experiment("NetGraft vs KD with the teacher's first blocks, on the same label-free shots",
                     "grafting beats KD on the same few label-free shots (Shen et al. 2021)")
    for n in NETGRAFT_SHOTS:
        for seed in seeds:
            few_shot = {"shots": n, "seed": seed, "holdout": 0, "labels": False}
            data = merge_configs(copy.deepcopy(base["data"]), {"batch_size": schedule.batch(n), "few_shot": few_shot})
            exp.runs.append(Run(f"kd-shared n={n}", seed, kd_shots_run(
                base, runs / f"shots{n}" / f"seed{seed}", "kd-shots-shared", seed, data, shared_student(options, units),
                teacher, epochs)))
    published = json.loads((NETGRAFT_KEPT / "results.json").read_text())["rows"]
    for row in published:
        if row["method"] in ("netgraft", "kd-shots"):
            label = {"netgraft": "netgraft", "kd-shots": "kd"}[row["method"]] + f" n={row['shots']}"
            exp.joined[label] = dict(zip(row.get("seeds", [0, 1, 2]), row["top1"]))  # issue 21's: seeds 0-2
    for n in NETGRAFT_SHOTS:
        exp.comparisons.append((f"kd-shared n={n}", f"netgraft n={n}", "grafting beats KD with the same copied blocks"))
        exp.comparisons.append((f"kd n={n}", f"kd-shared n={n}", "(reference) what the copied blocks alone give KD"))
    exp.notes.append("netgraft and kd rows: issue 21's runs (benchmarks/results/fashion-netgraft), seeds 0-2.")
    return exp


# ---------------------------------------------------------------- RTK vs AFD
RTK_KEPT = HERE / "results" / "fashion-rtk"


def experiment_rtk(base: dict, runs: Path, seeds: list[int]) -> Experiment:
    """RTK (representative teacher keys) beats AFD, resnet20 -> mobilenetv2, CE + 0.9 KD + the method: the runs of
    `fashion_claims.py --claim rtk` (seeds 0-2 with AT + KD, more seeds with `--methods afd rtk --seeds ...`),
    tabled here by the rule (this experiment trains nothing itself)."""
    exp = Experiment("RTK vs AFD, resnet20 -> mobilenetv2, CE + 0.9 KD + method",
                     "RTK beats AFD on the same pair (Yang et al. 2022, our spec)", teacher="teacher", alone="alone")
    for seed in seeds:
        for label, name in (("teacher", "teacher-seed"), ("alone", "student-alone-seed"), ("afd", "afd-seed"),
                            ("rtk", "rtk-seed")):
            kept = RTK_KEPT / f"{name}{seed}"
            if label == "teacher" and (kept / "reused_from.txt").is_file():
                kept = HERE / (kept / "reused_from.txt").read_text().strip().removeprefix("benchmarks/")
            exp.runs.append(Run(label, seed, {"output_dir": str(kept.parent), "name": kept.name}))
    exp.comparisons.append(("afd", "rtk", "RTK beats AFD"))
    exp.comparisons.append(("alone", "rtk", "(reference) RTK beats the student alone"))
    exp.notes.append("Runs trained by `fashion_claims.py --claim rtk`; read from benchmarks/results/fashion-rtk.")
    return exp


EXPERIMENTS = {"pursuhint": experiment_pursuhint, "ddnn": experiment_ddnn, "sftn": experiment_sftn,
               "netgraft": experiment_netgraft, "rtk": experiment_rtk}
#: experiments whose runs another script trains
TABLE_ONLY = {"rtk"}


# ---------------------------------------------------------------- running and the table
def folder_of(config: dict) -> Path:
    return Path(config["output_dir"]) / config["name"]


def reuse(exp: Experiment, runs: Path, source: Path) -> int:
    """Put finished runs of `source` (kept files) in place where this experiment plans a run of the same name and
    the same settings (`recipes.runs.changed_settings`: seed, data, models, losses, optimiser, schedule, ...)."""
    import yaml

    from kdforge.recipes.runs import changed_settings

    count = 0
    for run in exp.runs:
        kept, target = source / run.config["name"], folder_of(run.config)
        if not (kept / "summary.json").is_file() or (target / "summary.json").is_file():
            continue
        if not changed_settings(yaml.safe_load((kept / "config.yaml").read_text()) or {}, run.config):
            TABLE.put_back(kept, target)
            where = kept.relative_to(HERE.parent) if kept.is_relative_to(HERE.parent) else kept
            (target / "reused_from.txt").write_text(f"{where}\n")
            count += 1
    return count


def is_teacher(exp: Experiment, label: str) -> bool:
    """Whether runs of `label` teach students (kept with a slim checkpoint): the experiment's teacher row, and every
    row named '... teacher' (SFTN's three kinds)."""
    return label == exp.teacher or label.endswith("teacher")


def only_rows(exp: Experiment, labels: list[str]) -> Experiment:
    """`exp` with only the runs of `labels` (and the teachers those runs distil from, which must exist first); an
    unknown label is an error naming the known ones."""
    known = list(dict.fromkeys(r.label for r in exp.runs))
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise SystemExit(f"--only: no run labelled {', '.join(map(repr, unknown))}; labels: {', '.join(known)}")
    chosen = [r for r in exp.runs if r.label in labels]
    taught_by = {str(Path(r.config["teacher"]["checkpoint"])) for r in chosen if r.config.get("teacher")}
    keep = [r for r in exp.runs if r in chosen or str(folder_of(r.config)) in taught_by]
    return Experiment(exp.title, exp.claim, runs=keep, comparisons=exp.comparisons, teacher=exp.teacher,
                      alone=exp.alone, joined=exp.joined, notes=exp.notes)


def run_all(exp: Experiment, runs: Path, kept: Path, which: str) -> None:
    """Train what is missing, in order; each finished run is kept at once (so nothing is lost on a stop)."""
    from kdforge.recipes.runs import check_folder, is_finished, run_planned

    for run in exp.runs:
        check_folder(run.config)
        folder = folder_of(run.config)
        if is_finished(run.config) and folder.is_relative_to(runs) and not (folder / "reused_from.txt").is_file():
            # finished, but a stop came before it was kept
            copy_ = kept / folder.relative_to(runs)
            teacher = is_teacher(exp, run.label)
            if not (copy_ / "summary.json").is_file() or teacher and not (copy_ / "teacher.pt").is_file():
                TABLE.keep(folder, copy_.parent, teacher, which)
                print(f"kept {folder.relative_to(runs)}, finished before a stop", flush=True)
    todo = [r for r in exp.runs if not is_finished(r.config)]
    print(f"{len(exp.runs) - len(todo)} of {len(exp.runs)} runs finished; training {len(todo)}", flush=True)
    for i, run in enumerate(todo):
        started = time.time()
        summary = run_planned(run.config)
        folder = folder_of(run.config)
        TABLE.keep(folder, kept / folder.parent.relative_to(runs), is_teacher(exp, run.label), which)
        print(f"[{i + 1}/{len(todo)}] {folder.relative_to(runs)}: top-1 {summary['top1_last']:.2f} "
              f"({time.time() - started:.0f} s)", flush=True)


def collect(exp: Experiment, runs: Path, kept: Path) -> dict[str, dict[int, float]]:
    """{row: {seed: value}} from every finished run's summary (in the run folder, else the kept copy)."""
    values: dict[str, dict[int, float]] = {row: dict(v) for row, v in exp.joined.items()}
    for run in exp.runs:
        folder = folder_of(run.config)
        candidates = [folder / "summary.json"]
        if folder.is_relative_to(runs):
            candidates.append(kept / folder.relative_to(runs) / "summary.json")
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            continue
        summary = json.loads(found.read_text())
        summary["run_dir"] = str(found.parent)  # where its log is here
        for row, value in run.rows(summary).items():
            if value is not None:
                values.setdefault(row, {})[run.seed] = value
    return values


def write_table(exp: Experiment, values: dict[str, dict[int, float]], kept: Path, command: str) -> str:
    """evidence.md (and evidence.json) in `kept`: every row per seed, then each comparison by the rule."""
    from kdforge.recipes.stats import format_interval, format_mean_std, paired_difference

    lines = [f"## {exp.title}", "", f"Claim: {exp.claim}.", "", f"Command: `{command}`; machine: {TABLE.machine()}; "
             f"{date.today()}. Top-1 on the 10,000 test images at the last epoch; nothing selected on the test split.",
             ""]
    if exp.teacher in values and exp.alone in values:
        t, a = values[exp.teacher], values[exp.alone]
        lines += [f"Teacher {format_mean_std(list(t.values()))} vs the student alone {format_mean_std(list(a.values()))}"
                  f" ({'clearly stronger' if min(t.values()) > max(a.values()) else 'NOT clearly stronger'}: every "
                  f"teacher run against every student-alone run).", ""]
    lines += [f"Values are top-1 (%), except rows ending in distil/CE or {KL_ROW} (ratios of logged loss terms).", "",
              "| row | value (mean ± std) | n | per seed |", "|---|---|---|---|"]
    for row, by_seed in values.items():
        seeds = sorted(by_seed)
        digits = 3 if row.endswith(("distil/CE", KL_ROW)) else 2
        lines.append(f"| {row} | {format_mean_std([by_seed[s] for s in seeds], digits)} | {len(seeds)} | "
                     + ", ".join(f"{s}: {by_seed[s]:.{digits}f}" for s in seeds) + " |")
    lines += ["", "| claim | row minus baseline | paired difference [95 % interval] | seeds | verdict |",
              "|---|---|---|---|---|"]
    decided = []
    for baseline, row, what in exp.comparisons:
        if baseline not in values or row not in values:
            continue
        result = paired_difference(values[row], values[baseline])
        decided.append({"baseline": baseline, "row": row, "claim": what,
                        **{k: None if isinstance(v, float) and v != v else v for k, v in result.items()}})
        lines.append(f"| {what} | {row} − {baseline} | {format_interval(result)} | {result['n']} | "
                     f"**{result['verdict']}** |")
    lines += ["", "Verdict: higher / lower when the 95 % Student-t interval of the paired per-seed differences lies "
              "above / below 0, else not resolved (`kdforge.recipes.stats.paired_difference`).", *exp.notes]
    text = "\n".join(lines) + "\n"
    (kept / "evidence.md").write_text(text)
    (kept / "evidence.json").write_text(json.dumps({"values": values, "comparisons": decided}, indent=2) + "\n")
    return text


#: run folders (runs/<folder>, benchmarks/results/<folder>) other than evidence-<experiment>: experiments that extend
#: issue 21's runs with the same configs (the students' teacher paths must stay the same)
FOLDERS = {"sftn": "fashion-sftn-e30", "rtk": "fashion-rtk"}
#: kept folders whose finished runs of the same name and settings are reused (checked by check_folder)
REUSE_FROM = {"ddnn": [HERE / "results" / "fashion-ddnn"], "sftn": [HERE / "results" / "fashion-ddnn-e30"]}


def restore_nested(kept: Path, runs: Path) -> int:
    """`fashion_table.restore` for every folder of `kept` that holds runs (nested ones too)."""
    parents = sorted({summary.parent.parent for summary in kept.rglob("summary.json")})
    return sum(TABLE.restore(parent, runs / parent.relative_to(kept)) for parent in parents)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="paired seeds (default: 0-4; rtk: every seed kept; netgraft: 0-2, the seeds of issue 21)")
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--table-only", action="store_true", help="write the table from the finished runs, train nothing")
    p.add_argument("--only", nargs="+", metavar="ROW", default=None,
                   help="train only the runs of these row labels (e.g. ekd no-distil 'alone resnet8'), for a short "
                        "session; the table shows whatever has finished")
    p.add_argument("--epochs", type=int, default=None,
                   help="the students' epochs instead of the table's 10 (teachers scale with them: PURSUhInT 4x, SFTN "
                        "3x), in folders named -e<N>; e.g. 240 on a GPU (not netgraft: the paper's schedule; not rtk)")
    args = p.parse_args(argv)
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: each seed once, got {args.seeds}")

    from kdforge.recipes.runs import teacher_which

    name = args.experiment
    if args.seeds is None:
        args.seeds = {"netgraft": [0, 1, 2], "rtk": sorted(
            int(d.name.removeprefix("rtk-seed")) for d in RTK_KEPT.glob("rtk-seed*"))}.get(name, [0, 1, 2, 3, 4])
    base = TABLE.recipe(False, args.root)
    base["train"]["progress"] = args.progress
    folder = FOLDERS.get(name, f"evidence-{name}")
    if args.epochs is not None and args.epochs != base["schedule"]["epochs"]:
        if args.epochs < 1 or name in ("netgraft", "rtk"):
            p.error(f"--epochs: a positive number, and not for {name}" if name in ("netgraft", "rtk")
                    else f"--epochs must be at least 1, got {args.epochs}")
        base["schedule"]["epochs"] = args.epochs
        folder = f"evidence-{name}-e{args.epochs}"  # another table: nothing reused from the table's schedule
    runs, kept = Path("runs") / folder, HERE / "results" / folder
    kept.mkdir(parents=True, exist_ok=True)
    if name not in TABLE_ONLY:
        restored = restore_nested(kept, runs)
        if restored:
            print(f"restored {restored} finished run(s) from {kept}", flush=True)
    exp = EXPERIMENTS[name](base, runs, args.seeds)
    for source in REUSE_FROM.get(name, []):
        reused = reuse(exp, runs, source)
        if reused:
            print(f"reused {reused} finished run(s) of the same settings from {source}", flush=True)
    if not args.table_only and name not in TABLE_ONLY:
        run_all(only_rows(exp, args.only) if args.only else exp, runs, kept, teacher_which(base))
    command = (f"python benchmarks/fashion_evidence.py --experiment {name} --seeds {' '.join(map(str, args.seeds))}"
               + (f" --epochs {args.epochs}" if args.epochs else ""))
    print(write_table(exp, collect(exp, runs, kept), kept, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
