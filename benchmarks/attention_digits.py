"""AT vs AFD vs RTK on the built-in digits: attention-based feature distillation, same budget and seeds.

For each seed: a teacher (CE), then students with CE + 0.9 KD (T = 4) and nothing more, or
plus AT (beta 1000, stage ends), AFD (beta 200) or RTK (beta 200, top-k 2), AFD and RTK over
every block output of both models. Every run is an ordinary engine run (folders under --out).
Prints a Markdown table of last-epoch top-1 (mean ± std over seeds).

    python benchmarks/attention_digits.py                       # 3 seeds
    python benchmarks/attention_digits.py --seeds 0 --epochs 2  # smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdforge.recipes.stats import format_mean_std

from pursuhint_digits import run  # noqa: E402  (benchmarks/ is the script's folder)

FEATURE_LOSSES = {"AT": ("at", 1000.0), "AFD": ("afd", 200.0), "RTK": ("rtk", 200.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--out", default="runs/attention-digits")
    args = p.parse_args()
    out = Path(args.out)
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    base = {"ce": 1.0, "kd": {"weight": 0.9, "T": 4.0}}
    for seed in args.seeds:
        teacher = run(f"teacher-seed{seed}", out, seed, args.epochs, student={"model": args.teacher},
                      losses={"ce": 1.0})
        results.setdefault("teacher", []).append(teacher["top1_last"])
        common = dict(student={"model": args.student}, teacher={"checkpoint": teacher["run_dir"]})
        students = {"CE + KD": base, **{f"CE + KD + {label}": {**base, method: beta}
                                        for label, (method, beta) in FEATURE_LOSSES.items()}}
        for label, losses in students.items():
            r = run(f"{label.replace(' + ', '-').replace(' ', '')}-seed{seed}", out, seed, args.epochs,
                    losses=losses, **common)
            results.setdefault(label, []).append(r["top1_last"])
            seconds.setdefault(label, []).append(r["train_time_s"] / max(r["epochs"], 1e-9))
    print(f"digits, teacher {args.teacher}, student {args.student}, {args.epochs} epochs, seeds {args.seeds}")
    print(f"| run | top-1 % (last epoch, mean ± std, {len(args.seeds)} seeds) | per seed | s/epoch |")
    print("|---|---|---|---|")
    for label, values in results.items():
        per_epoch = format_mean_std(seconds[label], 1) if label in seconds else "-"
        print(f"| {label} | {format_mean_std(values)} | {', '.join(f'{v:.2f}' for v in values)} | {per_epoch} |")


if __name__ == "__main__":
    main()
