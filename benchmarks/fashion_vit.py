"""Vision transformers on Fashion-MNIST (issue 37): a CNN teacher -> a ViT student, and a ViT teacher -> a CNN student.

The standard table's data (benchmarks/fashion_table.py: 600 training images per class after a 5 % validation
hold-out, the full test split, crop + flip, 10 epochs, 3 seeds) and two directions:

- **CNN -> ViT**: the table's resnet20 teachers (its committed slim checkpoints, best.pt on the validation
  hold-out), students a small timm ViT (28 px, 4 x 4 patches: 49 tokens, width 64, depth 6, 4 heads): alone
  (CE), KD (0.1 CE + 0.9 KD, T = 4) and DeiT-hard (the same ViT with a distillation token and head:
  `deit_*_distilled_*`); the ViTs train with AdamW (lr 1e-3, weight decay 0.05; SGD at the table's rate
  trains them poorly), the rest of the recipe the table's;
- **ViT -> CNN**: a ViT teacher of the same shape trained here (CE, `--teacher-epochs`, AdamW), students
  resnet8 alone and with KD (the table's SGD recipe); DeiT does not apply (a CNN has no distillation token).

Rows are compared by the paired rule (`kdforge.recipes.stats.paired_difference`); each run's ms per training
step is its summary's (one torch thread, the other core busy unless said). Every finished run is kept in
benchmarks/results/fashion-vit/ at once (teachers as slim checkpoints) and put back at the start.

    python benchmarks/fashion_vit.py                       # both directions, seeds 0-2
    python benchmarks/fashion_vit.py --direction cnn-vit   # one of them
    python benchmarks/fashion_vit.py --table-only

Needs timm (`pip install torch==2.13.0 'kdforge[timm]'`); where pip paired a CUDA build of torchvision with the
CPU torch, the script defines torchvision's two op schemas first so that timm imports (docs/models.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


if str(HERE) not in sys.path:  # the sibling scripts, also when this one is loaded by file (tests)
    sys.path.insert(0, str(HERE))
import fashion_table as TABLE  # noqa: E402
SHAPE = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 64, "depth": 6,
         "num_heads": 4}
VIT = {"import": "timm:create_model", "kwargs": {"model_name": "vit_tiny_patch16_224", **SHAPE}}
DEIT = {"import": "timm:create_model", "kwargs": {"model_name": "deit_tiny_distilled_patch16_224", **SHAPE}}
ADAMW = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
KD = {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}
TABLE_TEACHERS = HERE / "results" / "fashion"
KEPT = HERE / "results" / "fashion-vit"


def timm_importable() -> None:
    """Import timm (with torchvision's op schemas defined where its CUDA build meets the CPU torch)."""
    from kdforge.models.torchvision_ops import allow_torchvision_without_its_ops

    allow_torchvision_without_its_ops()
    import timm  # noqa: F401


def plan(base: dict, runs: Path, seeds: list[int], directions: list[str], teacher_epochs: int) -> list[tuple]:
    """(direction, row, seed, config) of every run, seed by seed."""
    from kdforge.recipes.runs import plan_run, teacher_section

    vit_base = copy.deepcopy(base)
    vit_base["optim"] = dict(ADAMW)
    planned = []
    for seed in seeds:
        if "cnn-vit" in directions:
            teacher = teacher_section(base, runs / f"table-teacher-seed{seed}")  # the table's, put back by main
            planned.append(("cnn-vit", "vit alone", seed, plan_run(vit_base, runs, f"vit-alone-seed{seed}", seed=seed,
                                                                   student=VIT, losses={"ce": 1.0})))
            planned.append(("cnn-vit", "vit kd", seed, plan_run(vit_base, runs, f"vit-kd-seed{seed}", seed=seed,
                                                                student=VIT, losses=dict(KD), teacher=teacher)))
            planned.append(("cnn-vit", "deit hard", seed, plan_run(
                vit_base, runs, f"deit-hard-seed{seed}", seed=seed, student=DEIT,
                losses={"deit": {"weight": 1.0, "kind": "hard"}}, teacher=teacher)))
        if "vit-cnn" in directions:
            teacher_cfg = copy.deepcopy(vit_base)
            teacher_cfg["schedule"]["epochs"] = teacher_epochs
            name = f"teacher-vit-e{teacher_epochs}-seed{seed}"
            planned.append(("vit-cnn", "vit teacher", seed, plan_run(teacher_cfg, runs, name, seed=seed, student=VIT,
                                                                     losses={"ce": 1.0})))
            student = {"model": "resnet8"}
            planned.append(("vit-cnn", "resnet8 alone", seed, plan_run(base, runs, f"resnet8-alone-seed{seed}",
                                                                       seed=seed, student=student, losses={"ce": 1.0})))
            planned.append(("vit-cnn", "resnet8 kd", seed, plan_run(
                base, runs, f"resnet8-kd-seed{seed}", seed=seed, student=student, losses=dict(KD),
                teacher=teacher_section(base, runs / name))))
    return planned


COMPARISONS = [("cnn-vit", "vit alone", "vit kd"), ("cnn-vit", "vit alone", "deit hard"),
               ("cnn-vit", "vit kd", "deit hard"), ("vit-cnn", "resnet8 alone", "resnet8 kd")]


def table(planned: list[tuple], runs: Path, machine: str, command: str) -> str:
    from kdforge.recipes.stats import format_interval, format_mean_std, mean_std, paired_difference

    values: dict[tuple, dict[int, float]] = {}
    cost: dict[tuple, list[float]] = {}
    for direction, row, seed, config in planned:
        found = next((f for f in (runs / config["name"] / "summary.json", KEPT / config["name"] / "summary.json")
                      if f.is_file()), None)
        if found is not None:
            summary = json.loads(found.read_text())
            values.setdefault((direction, row), {})[seed] = summary["top1_last"]
            cost.setdefault((direction, row), []).append(summary.get("ms_per_step") or 0.0)
    lines = [f"Command: `{command}`; {machine}; {date.today()}. Top-1 on the 10,000 test images at the last "
             f"epoch, nothing selected on the test split; ms per training step (batch 64) from each run's summary.",
             "", "| direction | row | top-1 (mean ± std) | per seed | ms / step |", "|---|---|---|---|---|"]
    for (direction, row), by_seed in values.items():
        seeds = sorted(by_seed)
        lines.append(f"| {direction} | {row} | {format_mean_std([by_seed[s] for s in seeds])} | "
                     + ", ".join(f"{s}: {by_seed[s]:.2f}" for s in seeds) + f" | {mean_std(cost[(direction, row)])[0]:.0f} |")
    lines += ["", "| direction | row minus baseline | paired difference [95 % interval] | seeds | verdict |",
              "|---|---|---|---|---|"]
    for direction, baseline, row in COMPARISONS:
        a, b = values.get((direction, baseline)), values.get((direction, row))
        if a and b:
            result = paired_difference(b, a)
            lines.append(f"| {direction} | {row} − {baseline} | {format_interval(result)} | {result['n']} | "
                         f"**{result['verdict']}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--direction", choices=["cnn-vit", "vit-cnn"], nargs="+", default=["cnn-vit", "vit-cnn"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-epochs", type=int, default=20,
                   help="the ViT teacher's epochs (students: 10; the committed table: 20)")
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    timm_importable()
    from kdforge.recipes.runs import check_folder, is_finished, run_planned, teacher_which

    base = TABLE.recipe(False, args.root)
    runs = Path("runs") / "fashion-vit"
    KEPT.mkdir(parents=True, exist_ok=True)
    TABLE.restore(KEPT, runs)
    for seed in args.seeds:  # the standard table's resnet20 teachers, as run folders (their best.pt on val)
        source, target = TABLE_TEACHERS / f"teacher-seed{seed}", runs / f"table-teacher-seed{seed}"
        if not (target / "summary.json").is_file():
            TABLE.put_back(source, target)
    planned = plan(base, runs, args.seeds, args.direction, args.teacher_epochs)
    if not args.table_only:
        for *_, config in planned:
            check_folder(config)
        todo = [r for r in planned if not is_finished(r[3])]
        for i, (_, row, _, config) in enumerate(todo):
            started = time.time()
            summary = run_planned(config)
            TABLE.keep(runs / config["name"], KEPT, row == "vit teacher", teacher_which(base))
            print(f"[{i + 1}/{len(todo)}] {config['name']}: top-1 {summary['top1_last']:.2f} "
                  f"({time.time() - started:.0f} s)", flush=True)
    command = "python benchmarks/fashion_vit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(planned, runs, TABLE.machine(), command.strip())
    (KEPT / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
