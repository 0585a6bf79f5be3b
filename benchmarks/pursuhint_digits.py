"""PURSUhInT on the built-in digits: hint layers chosen by clustering vs the teacher's stage ends.

For each seed: a resnet56 teacher (27 block outputs), then resnet8 students with
CE + KD(T=4) + FitNet (beta 100) or AT (beta 1000) at 3 hint pairs, the teacher's layers
chosen by PURSUhInT (CCA, K = 3) or its stage ends; and a KD-only student for reference.
Every run is an ordinary engine run (folders under --out). Prints a Markdown table.

    python benchmarks/pursuhint_digits.py                      # 3 seeds, about 13 min on 2 CPU cores
    python benchmarks/pursuhint_digits.py --seeds 0 --epochs 2 # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.recipes.quickstart import BASE
from kdforge.recipes.stats import format_mean_std

HINT_LOSSES = {"fitnet": 100.0, "at": 1000.0}


def run(name: str, out: Path, seed: int, epochs: int, **sections) -> dict:
    data = copy.deepcopy(BASE)
    data.update(name=name, seed=seed, output_dir=str(out), **sections)
    data["schedule"]["epochs"] = epochs
    data["train"]["progress"] = False
    return train_from_config(config_from_dict(data), overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--metric", default="cca")
    p.add_argument("--out", default="runs/pursuhint-digits")
    args = p.parse_args()
    out = Path(args.out)
    results: dict[str, list[float]] = {}
    chosen = []
    kd = {"weight": 1.0, "T": 4.0}
    for seed in args.seeds:
        teacher = run(f"teacher-seed{seed}", out, seed, args.epochs, student={"model": args.teacher},
                      losses={"ce": 1.0})
        results.setdefault("teacher", []).append(teacher["top1_last"])
        common = dict(student={"model": args.student}, teacher={"checkpoint": teacher["run_dir"]})
        r = run(f"kd-seed{seed}", out, seed, args.epochs, losses={"ce": 1.0, "kd": kd}, **common)
        results.setdefault("KD only", []).append(r["top1_last"])
        for method, beta in HINT_LOSSES.items():
            for label, hints in (("stage ends", {"select": "stage_ends"}),
                                 ("PURSUhInT", {"select": "auto", "metric": args.metric})):
                r = run(f"{method}-{label.replace(' ', '_')}-seed{seed}", out, seed, args.epochs,
                        losses={"ce": 1.0, "kd": kd, method: beta}, hints=hints, **common)
                results.setdefault(f"{method} + KD, {label} hints", []).append(r["top1_last"])
                if label == "PURSUhInT" and method == "fitnet":
                    saved = json.loads((Path(r["run_dir"]) / "hints.json").read_text())
                    chosen.append((seed, saved["hints"], [saved["layers"][i] for i in saved["stage_ends"]]))
    print(f"digits, teacher {args.teacher}, student {args.student}, {args.epochs} epochs, "
          f"seeds {args.seeds}, metric {args.metric}")
    print(f"| run | top-1 % (last epoch, mean ± std, {len(args.seeds)} seeds) | per seed |")
    print("|---|---|---|")
    for label, values in results.items():
        print(f"| {label} | {format_mean_std(values)} | {', '.join(f'{v:.2f}' for v in values)} |")
    for seed, hints, ends in chosen:
        print(f"seed {seed}: PURSUhInT hints {', '.join(hints)}; stage ends {', '.join(ends)}")


if __name__ == "__main__":
    main()
