"""Does tuning pay? (issue 38) `kdforge tune` on the Fashion-MNIST recipe against each method's usual settings.

The standard table's data and recipe (benchmarks/fashion_table.py: 600 training images per class after a 5 %
validation hold-out, the full test split, crop + flip, SGD, 10 epochs, resnet8 student) and one teacher for every
seed: the table's committed resnet20 of seed 0 (best.pt on the validation hold-out). Methods KD, DKD, CC, VID, AB
and CRD, each searched within the same budget (`--budget-per-method`, default 20 minutes of this machine) on the
validation split of seed 0 (Optuna TPE, successive-halving pruning; the usual settings are trial 0), then the best
settings trained beside the usual ones and the student alone over seeds 0-2 and compared on the test split by the
paired rule (`kdforge tune`'s final comparison, `OUT/final/report`).

Resumable: the study is SQLite (`runs/fashion-tune/tune.db`, copied to benchmarks/results/fashion-tune/ after each
trial) and the final runs are kept there as they finish, so a later session on a fresh machine continues it.

    python benchmarks/fashion_tune.py [--budget-per-method 20m] [--methods kd dkd cc vid ab crd]
    python benchmarks/fashion_tune.py --table-only   # tuned vs usual (KEPT/tuned-vs-usual.md) from the kept runs
    python benchmarks/fashion_tune.py --methods cc --min-epochs 4   # no pruning before epoch 4: its own folders,
                                                     # runs/ and results/fashion-tune-min-epochs-4/
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import fashion_table as TABLE  # noqa: E402

KEPT = HERE / "results" / "fashion-tune"
TEACHER = HERE / "results" / "fashion" / "teacher-seed0"
METHODS = ["kd", "dkd", "cc", "vid", "ab", "crd"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--budget-per-method", default="20m", help="search time per method (e.g. 20m, 1h)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--min-epochs", type=int, default=1,
                   help="kdforge tune --min-epochs: no trial pruned before this epoch; other than 1, the study and "
                        "its runs have their own folders (fashion-tune-min-epochs-N)")
    p.add_argument("--table-only", action="store_true",
                   help="write tuned-vs-usual.md from the kept study and final runs; train nothing")
    args = p.parse_args(argv)
    name = "fashion-tune" if args.min_epochs == 1 else f"fashion-tune-min-epochs-{args.min_epochs}"
    kept = KEPT.parent / name
    if args.table_only:
        print(write_table(kept))
        return 0
    from kdforge.recipes.runs import teacher_section
    from kdforge.recipes.tune import parse_budget, run_tune

    out = Path("runs") / name
    base = TABLE.recipe(False, args.root)
    teacher_dir = Path("runs") / "fashion-tune" / "table-teacher-seed0"  # every variant: the same teacher path
    if not (teacher_dir / "summary.json").is_file():
        TABLE.put_back(TEACHER, teacher_dir)
    base["teacher"] = teacher_section(base, teacher_dir)
    base["train"]["progress"] = False
    kept.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if (kept / "tune.db").is_file() and not (out / "tune.db").is_file():
        shutil.copyfile(kept / "tune.db", out / "tune.db")  # the study so far, from an earlier session
    if kept != KEPT:  # the usual settings and the student alone are the same runs as the main study's: reuse them
        for run in [r for m in ["student-alone", *args.methods] for r in (KEPT / "final").glob(f"{m}-seed*")]:
            shutil.copytree(run, kept / "final" / run.name, dirs_exist_ok=True)
    TABLE.restore(kept / "final", out / "final")

    def trial_done(method, number, values, seconds):
        shutil.copyfile(out / "tune.db", kept / "tune.db")
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        print(f"{method} trial {number} ({shown}): {seconds:.0f} s", flush=True)

    def run_done(i, n, run, summary, reused):
        if not reused:
            TABLE.keep(run.run_dir, kept / "final", run.label == "teacher", "last")
        print(f"[{i + 1}/{n}] {run.config['name']}: top-1 {summary.get('top1_last', float('nan')):.2f}"
              f"{' (reused)' if reused else ''}", flush=True)

    started = time.time()
    budget = parse_budget(args.budget_per_method) * len(args.methods)
    result = run_tune(base, args.methods, args.seeds, out, teacher_model=None, budget_s=budget,
                      on_trial=trial_done, on_run=run_done, min_epochs=args.min_epochs)
    shutil.copyfile(out / "tune.db", kept / "tune.db")
    shutil.copyfile(out / "tune.json", kept / "tune.json")
    (kept / "best").mkdir(exist_ok=True)
    for f in (out / "best").glob("*.yaml"):
        shutil.copyfile(f, kept / "best" / f.name)
    for f in out.glob("tune-*.png"):
        shutil.copyfile(f, kept / f.name)
    report = out / "final" / "report"
    for file_name in ("report.md", "bars.png"):
        if (report / file_name).is_file():
            shutil.copyfile(report / file_name, kept / file_name)
    (kept / "command.json").write_text(json.dumps({
        "command": "python benchmarks/fashion_tune.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": TABLE.machine(), "seconds_this_call": round(time.time() - started),
        "budget_per_method": args.budget_per_method, "min_epochs": args.min_epochs, "methods": args.methods,
        "seeds": args.seeds},
        indent=2) + "\n")
    print(json.dumps(result["best"], indent=2, default=str))
    print(write_table(kept))
    return 0


def _top1(final: Path, label: str) -> dict[int, float]:
    """{seed: test top-1 at the last epoch} of the kept final runs `label`-seed<N>."""
    values = {}
    for summary in sorted(final.glob(f"{label}-seed*/summary.json")):
        seed = summary.parent.name.removeprefix(f"{label}-seed")
        if seed.isdigit():
            values[int(seed)] = json.loads(summary.read_text())["top1_last"]
    return values


def write_table(kept: Path) -> str:
    """tuned-vs-usual.md: per method, the search (trials, pruned, validation top-1 of the usual and of the best
    settings, the best settings) and the test comparison over the seeds (usual, tuned, tuned - usual by the paired
    rule, each against the student alone). Where the usual settings won the search the tuned row is the usual one."""
    from kdforge.recipes.stats import format_interval, format_mean_std, paired_difference

    best = json.loads((kept / "tune.json").read_text())
    command = json.loads((kept / "command.json").read_text()) if (kept / "command.json").is_file() else {}
    final = kept / "final"
    alone = _top1(final, "student-alone")
    lines = [f"Budget {command.get('budget_per_method', '?')} of search per method (validation split of seed 0; "
             f"no trial pruned before epoch {command.get('min_epochs', 1)}), "
             f"then {len(alone)} seeds on the test split; machine: {command.get('machine', '?')}.", "",
             "| method | trials (pruned) | val top-1 usual → best | best settings | test usual | test tuned | "
             "tuned − usual [95 %] | verdict | tuned − alone [95 %] |", "|---|---|---|---|---|---|---|---|---|"]
    for method, b in best.items():
        usual = _top1(final, method)
        tuned = usual if b["usual_was_best"] else _top1(final, method + "_tuned")
        gain = paired_difference(tuned, usual)
        shown = ", ".join(f"{k}={v:.3g}" for k, v in b["params"].items())
        usual_val = "?" if b["usual_val_top1"] is None else f"{b['usual_val_top1']:.2f}"
        lines.append(
            f"| {method} | {b['trials']} ({b['pruned']}) | {usual_val} → {b['val_top1']:.2f} | "
            f"{'usual (won)' if b['usual_was_best'] else shown} | {format_mean_std(list(usual.values()))} | "
            f"{format_mean_std(list(tuned.values()))} | "
            f"{'0 (same runs)' if b['usual_was_best'] else format_interval(gain)} | "
            f"{'—' if b['usual_was_best'] else gain['verdict']} | {format_interval(paired_difference(tuned, alone))} |")
    lines += ["", f"student alone: {format_mean_std(list(alone.values()))} "
                  f"({', '.join(f'{s}: {v:.2f}' for s, v in sorted(alone.items()))})"]
    text = "\n".join(lines) + "\n"
    (kept / "tuned-vs-usual.md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
