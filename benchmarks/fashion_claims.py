"""The five systems' central claims, measured on Fashion-MNIST (issue 21), one `--claim` at a time.

Each claim runs its kdforge recipe on the standard table's data and schedule (benchmarks/fashion_table.py:
600 training images per class after a 5 % validation hold-out, the full test split, 10 epochs,
resnet20 teacher, resnet8 student unless the claim needs otherwise), 3 seeds, nothing selected on
the test split. Finished runs' summaries, configs and logs, and the teachers as slim checkpoints,
are copied to benchmarks/results/fashion-<claim>/ as they finish (also when the run is stopped), and
put back at the start, so a later session or a GPU machine continues the same runs.

    python benchmarks/fashion_claims.py --claim sftn       # SFTN: students of a student-friendly teacher
    python benchmarks/fashion_claims.py --claim rtk        # RTK vs AFD vs AT on a heterogeneous pair
    python benchmarks/fashion_claims.py --claim ddnn       # one EKD-trained resnet20/14/8 vs each alone
    python benchmarks/fashion_claims.py --claim netgraft   # NetGraft vs KD on 1, 5, 10 label-free shots
    python benchmarks/fashion_claims.py --claim pursuhint  # clustered hints vs stage ends, resnet56 teacher
    python benchmarks/fashion_claims.py --claim ddnn --epochs 30   # the same claim on a longer schedule

`--epochs N` (other than the table's 10) trains every run of the claim for N epochs (the cosine schedule
stretched, the same warm-up) in its own folders, runs/fashion-<claim>-e<N> and
benchmarks/results/fashion-<claim>-e<N>/; nothing is reused from the 10-epoch table there.

Where a claim's run is exactly a run of the standard table (same config: the resnet20 teachers, the
resnet8 student alone), that run's committed files are put back under the claim's folder and reused,
not trained again; each such reuse is named in the claim's docstring.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _table_module():
    spec = importlib.util.spec_from_file_location("fashion_table", HERE / "fashion_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLE = _table_module()
SFTN_METHODS = ["kd", "at", "fitnet", "crd"]


def claim_sftn(base: dict, runs: Path, seeds: list[int], progress: bool) -> dict:
    """SFTN (Park et al., NeurIPS 2021): students distilled from a student-friendly teacher (trained with
    resnet8 branches) beat students of a standard teacher, for KD, AT, FitNet and CRD."""
    from kdforge.recipes.sftn import run_sftn_pipeline

    base = {k: v for k, v in copy.deepcopy(base).items() if k != "student"}
    return run_sftn_pipeline(TABLE.TEACHER, TABLE.STUDENT, SFTN_METHODS, base=base, seeds=tuple(seeds),
                             output_dir=runs, progress=progress)


TABLE_KEPT = HERE / "results" / "fashion"


REUSED = "reused_from.txt"


def reuse_table_run(table_name: str, runs: Path, name: str, schedule: dict) -> None:
    """Put the standard table's finished run `table_name` (committed files, teacher checkpoint) in place as
    run `name` of a claim: the same config but for its name and folder, which check_folder then verifies.
    Kept in the claim's folder only as a marker naming the table run. Nothing is reused when the claim's
    `schedule` is not the table's (`--epochs`)."""
    source = TABLE_KEPT / table_name
    if not (source / "summary.json").is_file() or schedule != TABLE.RECIPE["schedule"]:
        return  # not in the table (or another schedule): the claim trains it
    target = runs / name
    target.mkdir(parents=True, exist_ok=True)
    for file in TABLE.RUN_FILES:
        if not (target / file).is_file():
            shutil.copyfile(source / file, target / file)
    if (source / "teacher.pt").is_file() and not (target / "checkpoints" / "last.pt").is_file():
        (target / "checkpoints").mkdir(exist_ok=True)
        for which in ("last", "best"):
            shutil.copyfile(source / "teacher.pt", target / "checkpoints" / f"{which}.pt")
    (target / REUSED).write_text(f"benchmarks/results/fashion/{table_name}\n")


RTK_STUDENT = "mobilenetv2"
RTK_METHODS = [str(HERE / "fashion_variants" / "at_kd.yaml"), "afd", "rtk"]


def claim_rtk(base: dict, runs: Path, seeds: list[int], progress: bool, methods: list[str] | None = None) -> dict:
    """RTK (attention-based feature KD with representative teacher keys) beats AFD and AT, at one setting
    (CE + 0.9 KD + the method at its usual weight), on a heterogeneous pair: resnet20 -> mobilenetv2.
    The homogeneous pair (resnet20 -> resnet8) is in the standard table. The resnet20 teachers are the
    table's (reused, same config)."""
    from kdforge.recipes.compare import run_compare

    for seed in seeds:
        reuse_table_run(f"teacher-seed{seed}", runs, f"teacher-seed{seed}", base["schedule"])
    base = copy.deepcopy(base)
    base["student"] = {"model": RTK_STUDENT}
    chosen = [m for m in RTK_METHODS if Path(m).stem in methods] if methods else RTK_METHODS
    result = run_compare(base, chosen, seeds, runs, teacher_model=TABLE.TEACHER, progress=progress)
    result["table"] = result["gain_table"] or result["table"]
    return result


DDNN_FULL, DDNN_SUBNETS = "resnet20", ["resnet14", "resnet8"]


def claim_ddnn(base: dict, runs: Path, seeds: list[int], progress: bool) -> dict:
    """DDNN + EKD (Zhao et al., arXiv:2103.00793): every sub-net of one EKD-trained depth-dynamic resnet20
    (sub-nets resnet14 and resnet8, switchable BN) beats the same depth trained alone at the same budget,
    and the full net is no worse; and one EKD run's time vs the three separate runs. Every run is trained here
    (none reused from the table), so that all times come from the same machine and thread count."""
    from kdforge.recipes.ddnn import run_ddnn_pipeline

    base = {k: v for k, v in copy.deepcopy(base).items() if k != "student"}
    result = run_ddnn_pipeline(DDNN_FULL, DDNN_SUBNETS, base=base, seeds=tuple(seeds), output_dir=runs,
                               progress=progress)
    plot_ddnn(result["rows"], runs / "ddnn_macs.png")
    return result


def plot_ddnn(rows: list[dict], path: Path) -> Path:
    """Test top-1 against MACs of every depth: the sub-nets of one EKD-trained net and each depth alone
    (mean and the seeds' spread)."""
    import matplotlib.pyplot as plt

    from kdforge.plots import save_figure
    from kdforge.recipes.stats import mean_std

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = sorted(rows, key=lambda r: r["macs"])
    for key, label in (("ekd_top1", "one DDNN, EKD"), ("independent_top1", "each depth alone (CE)")):
        points = [(r["macs"] / 1e6, *mean_std(r[key])) for r in rows if r.get(key)]
        if points:
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                        capsize=3, label=label)
    for r in rows:
        ax.annotate(r["model"] or r["path"], (r["macs"] / 1e6, mean_std(r["ekd_top1"])[0]), fontsize=8,
                    textcoords="offset points", xytext=(4, -12))
    ax.set(xlabel="MACs per image (millions, 28x28 input)", ylabel="test top-1 (%)",
           title="DDNN + EKD on Fashion-MNIST (resnet20 holding resnet14, resnet8)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


#: NetGraft's VGGs need 32x32 inputs (five 2x2 pools): the padded Fashion-MNIST; plain VGGs (no BN in the
#: convs) train with Adam, as the recipe's digits settings (SGD at 0.05 diverges there)
NETGRAFT_WIDTH = 0.25
NETGRAFT_OPTIM = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}


def claim_netgraft(base: dict, runs: Path, seeds: list[int], progress: bool) -> dict:
    """NetGraft (Shen et al., AAAI 2021): with n = 1, 5, 10 label-free images per class, grafting a
    vgg16_nobn_thin student into a vgg16_nobn teacher (both width 0.25) beats KD on the same shots and
    approaches KD on the whole (600/class, labelled) training subset. One teacher (seed 0), as the paper
    distils from one teacher; the seeds vary the shots drawn and the students. Paper's CIFAR-10 schedule."""
    from kdforge.recipes.netgraft import SCHEDULES, run_netgraft_pipeline, train_teacher

    base = {k: v for k, v in copy.deepcopy(base).items() if k != "student"}
    base["data"]["options"] = {"image_size": 32}
    base["optim"] = dict(NETGRAFT_OPTIM)
    options = {"width": NETGRAFT_WIDTH}
    teacher = train_teacher(base, "vgg16_nobn", options, runs, progress=progress)
    result = run_netgraft_pipeline(teacher, base=base, shots=(1, 5, 10), seeds=seeds, output_dir=runs,
                                   student="vgg16_nobn_thin", student_options=options,
                                   schedule=SCHEDULES["cifar10"], progress=progress)
    plot_netgraft(result["rows"], runs / "netgraft_shots.png")
    return result


def plot_netgraft(rows: list[dict], path: Path) -> Path:
    """Test top-1 against label-free images per class: NetGraft and KD on the same shots (mean and the seeds'
    spread), KD + CE on the whole training subset as a line."""
    import matplotlib.pyplot as plt

    from kdforge.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in (("netgraft", "NetGraft (label-free)"), ("kd-shots", "KD, same shots (label-free)")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["shots"])
        if mine:
            ax.errorbar([r["shots"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                        marker="o", capsize=3, label=label)
    for r in rows:
        if r["method"] == "kd-full":
            ax.axhline(r["mean"], color="gray", linestyle="--", label="KD + CE, 600 labelled images/class")
    ax.set(xscale="log", xlabel="images per class", ylabel="test top-1 (%)",
           title="NetGraft on Fashion-MNIST (vgg16_nobn -> thin, width 0.25)")
    ax.set_xticks([1, 5, 10], labels=["1", "5", "10"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


PURSUHINT_TEACHER = "resnet56"
PURSUHINT_METHODS = ["fitnet", "at"]
#: `hints: auto` selects with CCA (the paper's default); one CKA variant; the usual hint points
PURSUHINT_HINTS = {"cca": {"select": "auto", "metric": "cca"}, "cka_linear": {"select": "auto", "metric": "cka_linear"},
                   "stage_ends": {"select": "stage_ends"}}


PURSUHINT_STUDENTS = ("resnet8", "resnet20")


def claim_pursuhint(base: dict, runs: Path, seeds: list[int], progress: bool) -> dict:
    """PURSUhInT (Keser et al., ESWA 2023): hint layers chosen by clustering a deep teacher's layers
    (resnet56, 27 blocks; CCA and linear CKA) beat the teacher's stage ends for the same hint method
    (FitNet, AT at their usual weights), students resnet8 and resnet20."""
    from kdforge.methods.usual import usual_losses
    from kdforge.recipes.runs import check_folder, plan_run, run_planned, teacher_section
    from kdforge.recipes.stats import format_mean_std

    base = copy.deepcopy(base)
    base["train"]["progress"] = progress
    epochs = base["schedule"]["epochs"]
    teacher_base = {k: v for k, v in base.items() if k != "student"}
    planned, teachers = [], {}
    for seed in seeds:
        teachers[seed] = plan_run(teacher_base, runs, f"teacher-{PURSUHINT_TEACHER}-seed{seed}", seed=seed,
                                  student={"model": PURSUHINT_TEACHER}, losses={"ce": 1.0})
    for student in PURSUHINT_STUDENTS:  # the first student on every seed before the next (a stop keeps whole rows)
        for seed in seeds:
            if student == PURSUHINT_STUDENTS[0]:
                planned.append(("teacher", None, None, seed, teachers[seed]))
            for method in PURSUHINT_METHODS:
                for variant, hints in PURSUHINT_HINTS.items():
                    run = plan_run(base, runs, f"{student}-{method}-{variant}-seed{seed}", seed=seed,
                                   student={"model": student}, losses=usual_losses(method, epochs),
                                   teacher=teacher_section(base, runs / teachers[seed]["name"]), hints=dict(hints))
                    planned.append((student, method, variant, seed, run))
    for *_, data in planned:
        check_folder(data)
    top1: dict = {}
    for student, method, variant, seed, data in planned:
        summary = run_planned(data)
        top1.setdefault((student, method, variant), {})[seed] = summary["top1_last"]
        print(f"{data['name']}: top-1 {summary['top1_last']:.2f}", flush=True)
    lines = ["| teacher | student | method | hints | top-1 (mean ± std) | per seed |", "|---|---|---|---|---|---|"]
    for (student, method, variant), values in top1.items():
        per_seed = [values[s] for s in seeds]
        who = f"{PURSUHINT_TEACHER} (own run)" if student == "teacher" else PURSUHINT_TEACHER
        lines.append(f"| {who} | {student or ''} | {method or 'CE'} | {variant or ''} | {format_mean_std(per_seed)} "
                     f"| {', '.join(f'{v:.2f}' for v in per_seed)} |")
    table = "\n".join(lines)
    (runs / "results.md").write_text(table + "\n")
    return {"table": table}


CLAIMS = {"sftn": claim_sftn, "rtk": claim_rtk, "ddnn": claim_ddnn, "netgraft": claim_netgraft,
          "pursuhint": claim_pursuhint}


def keep_finished(runs: Path, kept: Path, which: str) -> int:
    """Copy every finished run under `runs` (nested folders too) into `kept`: teachers with their slim
    checkpoint, a hint selection with its heat-map; a run reused from the table only as its marker."""
    count = 0
    for summary in sorted(runs.rglob("summary.json")):
        run_dir = summary.parent
        dest = kept / run_dir.relative_to(runs).parent
        if (run_dir / REUSED).is_file():
            (dest / run_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / REUSED, dest / run_dir.name / REUSED)
            continue
        TABLE.keep(run_dir, dest, "teacher" in run_dir.name, which)
        for extra in ("hints.json", "hints.png"):
            if (run_dir / extra).is_file():
                shutil.copyfile(run_dir / extra, dest / run_dir.name / extra)
        count += 1
    for name in ("results.md", "results.json", "netgraft_shots.png", "ddnn_macs.png", "report/report.md",
                 "report/bars.png"):
        if (runs / name).is_file():
            shutil.copyfile(runs / name, kept / Path(name).name)
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claim", choices=sorted(CLAIMS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--methods", nargs="+", default=None,
                   help="--claim rtk only: a part of its methods (at_kd afd rtk), e.g. afd rtk for more paired seeds")
    p.add_argument("--epochs", type=int, default=None,
                   help="train every run for this many epochs (default: the table's 10) in folders named -e<N>")
    args = p.parse_args(argv)
    if args.methods and args.claim != "rtk":
        p.error("--methods is for --claim rtk")
    if args.methods and not set(args.methods) <= {Path(m).stem for m in RTK_METHODS}:
        p.error(f"--methods: choose from {' '.join(Path(m).stem for m in RTK_METHODS)}, got {' '.join(args.methods)}")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")

    from kdforge.recipes.runs import teacher_which

    base = TABLE.recipe(False, args.root)
    folder = f"fashion-{args.claim}"
    if args.epochs is not None and args.epochs != base["schedule"]["epochs"]:
        base["schedule"]["epochs"] = args.epochs
        folder += f"-e{args.epochs}"
    runs = Path("runs") / folder
    kept = HERE / "results" / folder
    kept.mkdir(parents=True, exist_ok=True)
    restored = TABLE.restore(kept, runs)
    if restored:
        print(f"restored {restored} finished run(s) from {kept}", flush=True)
    started = time.time()
    try:
        extra = {"methods": args.methods} if args.methods else {}
        result = CLAIMS[args.claim](base, runs, args.seeds, args.progress, **extra)
    finally:
        kept_runs = keep_finished(runs, kept, teacher_which(base))
        print(f"kept {kept_runs} finished run(s) in {kept} ({(time.time() - started) / 60:.0f} min)", flush=True)
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
