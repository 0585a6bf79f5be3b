"""The standard kdforge table: every method that distils a standard student, on Fashion-MNIST.

`kdforge compare` with one fixed recipe (RECIPE below):

- data: Fashion-MNIST from its official IDX files (Debian's dataset-fashion-mnist, `make data`),
  native 28x28; a seeded, class-balanced draw of 600 training images per class (6,000; seed 0,
  the same draw for every run seed), drawn after a 5 % class-balanced validation hold-out
  (3,000 images, seed 0) is set aside; the full 10,000-image test split. Augmentation: random
  crop with 2-pixel zero padding and horizontal flip (clothes are left-right symmetric).
- teacher resnet20 and student resnet8 (CIFAR ResNets of He et al. 2016, one input channel),
  each teacher trained once per seed (CE) and distilled from at its best.pt chosen on the
  validation hold-out (never on the test split).
- SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, cosine over 10 epochs with half an
  epoch of warm-up; bf16 autocast and channels-last where the CPU has fast bf16 (precision auto).
- the student alone, and each method at its usual CIFAR-100 weights (kdforge/methods/usual.py:
  CE + beta * method; KD as 0.1 CE + 0.9 KD at T = 4; AFD and RTK with 0.9 KD added, as AFD does;
  AB's and FT's pre-training and DKD's warm-up scaled from 240 epochs to 10), 3 seeds;
- diagnostic rows (benchmarks/fashion_variants/*.yaml): where a method did nothing or harm at its
  usual weights, the same method with the one setting that explains why (each file says which);
  and AT at AFD's setting (CE + 0.9 KD + AT), to compare AT, AFD and RTK at one setting.

Every finished run's summary.json, config.yaml and log.jsonl are copied to
benchmarks/results/fashion/ (fashion-full/ with --full), and each teacher as a slim checkpoint
(teacher.pt, about 1 MB), so that a later session on a fresh machine continues the same table:
at start the committed files are put back into the run folder, finished runs are reused and an
interrupted one resumes from its last checkpoint. The table (report.md, bars.png, table.md) is
written when every run is done; `--report-only` writes it from the runs finished so far.

    python benchmarks/fashion_table.py                  # the table on this machine
    python benchmarks/fashion_table.py --full           # the same recipe on all 60,000 training images
    python benchmarks/fashion_table.py --methods kd dkd --seeds 0   # a part of it
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "nst", "crd", "dkd", "oh", "afd", "rtk",
           "dist", "wsld", "ickd", "reviewkd", "catkd", "fsp", "ctkd", "srd", "kdsvd", "mlkd", "pad", "simkd",
           "sskd"]
#: diagnostic rows: a method that misbehaved at its usual weights with the one setting that explains it, and
#: AT at AFD's setting (CE + KD + AT) beside AFD and RTK
#: (each file says why); labelled by file name
VARIANTS = [str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)
            for p in sorted((HERE / "fashion_variants").glob("*.yaml"))]
TEACHER, STUDENT = "resnet20", "resnet8"
SHOTS = 600  # training images per class (--full: all)
RECIPE = {
    "data": {"name": "fashion_mnist", "options": {"image_size": 28}, "batch_size": 64,
             "val_split": {"fraction": 0.05, "seed": 0},
             "few_shot": {"shots": SHOTS, "seed": 0, "labels": True},
             "augment": {"crop_padding": 2, "hflip": True}},
    "student": {"model": STUDENT},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "epochs": 10, "warmup_epochs": 0.5},
    "train": {"precision": "auto", "eval_every": 5, "log_every": 20},
}
RUN_FILES = ("summary.json", "config.yaml", "log.jsonl")


def recipe(full: bool, root: str | None) -> dict:
    base = copy.deepcopy(RECIPE)
    if full:
        del base["data"]["few_shot"]
        base["data"]["drop_last"] = True  # the engine's default without few_shot, said here for clarity
    if root:
        base["data"]["root"] = root
    return base


def restore(kept: Path, runs: Path) -> int:
    """Put the committed files of finished runs (and the teachers' slim checkpoints) back into `runs`."""
    count = 0
    for summary in sorted(kept.glob("*/summary.json")):
        target = runs / summary.parent.name
        if (target / "summary.json").is_file():
            continue
        put_back(summary.parent, target)
        count += 1
    return count


def put_back(source: Path, target: Path) -> None:
    """One kept run (`source`: its small files, a teacher's slim checkpoint) as the run folder `target`."""
    target.mkdir(parents=True, exist_ok=True)
    if (source / "teacher.pt").is_file():
        (target / "checkpoints").mkdir(exist_ok=True)
        for which in ("last", "best"):  # the slim file is the checkpoint the students use
            shutil.copyfile(source / "teacher.pt", target / "checkpoints" / f"{which}.pt")
    for name in reversed(RUN_FILES):  # summary.json last: a stop in between leaves a run that is not finished
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def keep(run_dir: Path, kept: Path, is_teacher: bool, which: str) -> None:
    """Copy a finished run's small files to `kept`; a teacher also as a slim checkpoint of `which`."""
    from kdforge.deploy.export import export_model

    dest = kept / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in reversed(RUN_FILES):  # summary.json last: a kept run without the rest is never taken as finished
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
    if is_teacher and not (dest / "teacher.pt").is_file():
        export_model(run_dir, which=which, out=dest / "teacher.pt")
        (dest / "teacher.pt.json").unlink(missing_ok=True)  # its metadata repeats the summary


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    import torch

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="all 60,000 training images (for a GPU)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods or method files (default: every method, then the diagnostic variants in "
                        "benchmarks/fashion_variants/)")
    p.add_argument("--no-variants", action="store_true", help="without the diagnostic variants")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--out", type=Path, default=None, help="run folders (default runs/fashion[-full])")
    p.add_argument("--report-only", action="store_true", help="report on the finished runs, train nothing")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = METHODS + ([] if args.no_variants else VARIANTS)

    from kdforge.recipes.compare import TEACHER as TEACHER_LABEL, plan_compare, run_compare
    from kdforge.recipes.runs import teacher_which
    from kdforge.report import write_report

    tag = "fashion-full" if args.full else "fashion"
    runs = args.out or Path("runs") / tag
    kept = HERE / "results" / tag
    base = recipe(args.full, args.root)
    restored = restore(kept, runs)
    if restored:
        print(f"restored {restored} finished run(s) from {kept}", flush=True)
    which = teacher_which(base)
    started = time.time()

    def on_run(i, n, run, summary, reused):
        keep(runs / run.config["name"], kept, run.label == TEACHER_LABEL, which)
        top1 = summary.get("top1_last")
        note = " (reused)" if reused else f" in {summary.get('wall_time_s', 0):.0f} s"
        print(f"[{i + 1}/{n}] {run.config['name']}: top-1 {top1:.2f}{note}", flush=True)

    if args.report_only:
        planned = plan_compare(base, args.methods, args.seeds, runs, teacher_model=TEACHER)
        done = [runs / r.config["name"] for r in planned if (runs / r.config["name"] / "summary.json").is_file()]
        result = write_report(done, out=runs / "report", baseline="student-alone")
    else:
        result = run_compare(base, args.methods, args.seeds, runs, teacher_model=TEACHER,
                             progress=args.progress, on_run=on_run)
    write_table(result, kept, runs, args, time.time() - started)
    return 0


def write_table(result: dict, kept: Path, runs: Path, args, elapsed_s: float) -> None:
    """table.md (the gain table, with recipe, machine, date and time), report.md and bars.png into `kept`."""
    summaries = [json.loads(p.read_text()) for p in kept.glob("*/summary.json")]
    compute_s = sum(s.get("wall_time_s") or 0 for s in summaries)
    command = "python benchmarks/fashion_table.py" + (" --full" if args.full else "")
    lines = [f"# Fashion-MNIST: every method, {TEACHER} -> {STUDENT}\n",
             f"Command: `{command}`; machine: {machine()}; date: {date.today()}; "
             f"{len(summaries)} runs, {compute_s / 60:.0f} min of training in all (this call: {elapsed_s / 60:.0f} min).",
             "Top-1 on the 10,000 test images at the last epoch; gain over the student alone paired by seed. "
             "Nothing selected on the test split.\n", result["gain_table"] or result["table"]]
    (kept / "table.md").write_text("\n".join(lines) + "\n")
    for name in ("report.md", "bars.png"):
        shutil.copyfile(runs / "report" / name, kept / name)
    print("\n".join(lines[3:]))
    print(f"\nwrote {kept / 'table.md'}, report.md, bars.png; report: {runs / 'report' / 'report.html'}")


if __name__ == "__main__":
    sys.exit(main())
