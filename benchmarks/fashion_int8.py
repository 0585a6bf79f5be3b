"""Students for small devices on Fashion-MNIST (issue 39): fp32, int8 after training, int8 by QAT, with and without KD.

The standard table's data and recipe (benchmarks/fashion_table.py: 600 training images per class after a 5 %
validation hold-out, the full test split, crop + flip, SGD, 10 epochs) and its committed resnet20 teachers
(best.pt on the validation hold-out); students resnet8 and mobilenetv2 (CRD's CIFAR MobileNetV2, width 0.5), each:

- **alone** (CE) and **kd** (0.1 CE + 0.9 KD, T = 4), trained in fp32; each exported as fp32 ONNX and as int8 by
  post-training static quantisation (`kdforge export --format onnx --int8`, 256 calibration images of the
  training split);
- **qat alone** and **qat kd**: the same losses with `train.quantize: {mode: qat, start_epoch: 5, backend: x86}`
  (fp32 for epochs 0-4, fake int8 for epochs 5-9; our choice of schedule), exported as their int8 model.

Every ONNX file is evaluated on the test split as deployed (`kdforge eval FILE`); top-1 at the last epoch,
nothing selected on the test split. Rows are compared by the paired rule (`kdforge.recipes.stats`); file sizes and
ONNX Runtime latency per image (batch 1 and 64, one thread) from seed 0. Every finished run is kept in
benchmarks/results/fashion-int8/ at once (its summary, log and the evaluated files' numbers), so a later session
continues the table.

    python benchmarks/fashion_int8.py [--seeds 0 1 2] [--students resnet8 mobilenetv2] [--table-only]
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
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import fashion_table as TABLE  # noqa: E402

KEPT = HERE / "results" / "fashion-int8"
TEACHERS = HERE / "results" / "fashion"
KD = {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}
QAT = {"mode": "qat", "start_epoch": 5, "backend": "x86"}
ROWS = {"alone": ({"ce": 1.0}, False), "kd": (KD, False), "qat alone": ({"ce": 1.0}, True), "qat kd": (KD, True)}


def plan(base: dict, runs: Path, seeds: list[int], students: list[str]) -> list[tuple]:
    """(student, row, seed, config) of every run, seed by seed."""
    from kdforge.recipes.runs import plan_run, teacher_section

    planned = []
    for seed in seeds:
        teacher = teacher_section(base, runs / f"table-teacher-seed{seed}")
        for student in students:
            for row, (losses, qat) in ROWS.items():
                cfg = copy.deepcopy(base)
                if qat:
                    cfg["train"]["quantize"] = dict(QAT)
                planned.append((student, row, seed, plan_run(
                    cfg, runs, f"{student}-{row.replace(' ', '-')}-seed{seed}", seed=seed, student={"model": student},
                    losses=copy.deepcopy(losses), **({"teacher": teacher} if "kd" in row else {}))))
    return planned


def files_of(run_dir: Path, qat: bool, latency: bool) -> dict:
    """Export the run's student (fp32 and PTQ int8, or its QAT int8 model); each file's test top-1 and size."""
    from int8_speed import latency_ms

    from kdforge.deploy.evaluate_file import evaluate_file
    from kdforge.deploy.export import export_model

    out = {}
    for kind, int8 in ((("int8 qat", True),) if qat else (("fp32", False), ("int8 ptq", True))):
        result = export_model(run_dir, format="onnx", int8=int8)
        path = result["path"]
        row = {"top1": evaluate_file(path)["top1"], "kb": Path(path).stat().st_size / 1024,
               "agreement": (result.get("int8_check") or {}).get("top1_agreement")}
        if latency:
            channels = json.loads(Path(result["metadata"]).read_text())["in_channels"]
            row["ms_b1"] = latency_ms(path, result["image_size"], channels, 1, 100, 1)
            row["ms_b64"] = latency_ms(path, result["image_size"], channels, 64, 10, 1)
        out[kind] = row
    return out


def table(planned: list[tuple], machine: str, command: str) -> str:
    from kdforge.recipes.stats import format_interval, format_mean_std, paired_difference

    values: dict[tuple, dict[int, float]] = {}
    files: dict[tuple, dict] = {}
    for student, row, seed, config in planned:
        kept = KEPT / config["name"] / "files.json"
        if not kept.is_file():
            continue
        summary = json.loads((KEPT / config["name"] / "summary.json").read_text())
        values.setdefault((student, f"{row} (training, fake int8)" if "qat" in row else f"{row} (fp32, PyTorch)"),
                          {})[seed] = summary["top1_last"]
        for kind, numbers in json.loads(kept.read_text()).items():
            values.setdefault((student, f"{row}: {kind} ONNX"), {})[seed] = numbers["top1"]
            if seed == 0:
                files[(student, f"{row}: {kind}")] = numbers
    lines = [f"Command: `{command}`; {machine}; {date.today()}. Test top-1 (10,000 images) at the last epoch; the "
             f"ONNX rows are the exported files run in ONNX Runtime (`kdforge eval FILE`).", "",
             "| student | row | top-1 (mean ± std) | per seed |", "|---|---|---|---|"]
    for (student, row), by_seed in values.items():
        seeds = sorted(by_seed)
        lines.append(f"| {student} | {row} | {format_mean_std([by_seed[s] for s in seeds])} | "
                     + ", ".join(f"{s}: {by_seed[s]:.2f}" for s in seeds) + " |")
    lines += ["", "| student | row minus baseline | paired difference [95 % interval] | seeds | verdict |",
              "|---|---|---|---|---|"]
    comparisons = [("kd: fp32 ONNX", "alone: fp32 ONNX"), ("kd: int8 ptq ONNX", "kd: fp32 ONNX"),
                   ("qat kd: int8 qat ONNX", "kd: int8 ptq ONNX"), ("qat kd: int8 qat ONNX", "qat alone: int8 qat ONNX"),
                   ("qat kd: int8 qat ONNX", "kd: fp32 ONNX"), ("qat alone: int8 qat ONNX", "alone: int8 ptq ONNX")]
    for student in dict.fromkeys(s for s, *_ in planned):
        for row, baseline in comparisons:
            a, b = values.get((student, baseline)), values.get((student, row))
            if a and b:
                result = paired_difference(b, a)
                lines.append(f"| {student} | {row} − {baseline} | {format_interval(result)} | {result['n']} | "
                             f"**{result['verdict']}** |")
    lines += ["", "Files of seed 0 (ONNX Runtime, one intra-op thread, median per image):", "",
              "| student | file | size (KB) | test top-1 | agrees with its reference | ms / image, batch 1 | "
              "ms / image, batch 64 |", "|---|---|---:|---:|---:|---:|---:|"]
    for (student, name), n in files.items():
        agree = "" if n.get("agreement") is None else f"{100 * n['agreement']:.1f} %"
        lines.append(f"| {student} | {name} | {n['kb']:.0f} | {n['top1']:.2f} | {agree} | "
                     f"{n.get('ms_b1', float('nan')):.3f} | {n.get('ms_b64', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--students", nargs="+", default=["resnet8", "mobilenetv2"])
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="another schedule (QAT from its middle epoch); its own "
                                                             "folders (fashion-int8-e<N>)")
    args = p.parse_args(argv)
    from kdforge.recipes.runs import check_folder, run_planned

    global KEPT
    base = TABLE.recipe(False, args.root)
    runs = Path("runs") / "fashion-int8"
    if args.epochs is not None and args.epochs != base["schedule"]["epochs"]:
        base["schedule"]["epochs"] = args.epochs
        QAT["start_epoch"] = args.epochs // 2
        runs, KEPT = Path(f"{runs}-e{args.epochs}"), Path(f"{KEPT}-e{args.epochs}")
    KEPT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # the standard table's resnet20 teachers, as run folders (their best.pt on val)
        source, target = TEACHERS / f"teacher-seed{seed}", runs / f"table-teacher-seed{seed}"
        if not (target / "summary.json").is_file():
            TABLE.put_back(source, target)
    planned = plan(base, runs, args.seeds, args.students)
    if not args.table_only:
        for *_, config in planned:
            check_folder(config)
        todo = [r for r in planned if not (KEPT / r[3]["name"] / "files.json").is_file()]
        for i, (student, row, seed, config) in enumerate(todo):
            started = time.time()
            summary = run_planned(config)  # resumes an interrupted run
            run_dir = runs / config["name"]
            numbers = files_of(run_dir, "qat" in row, latency=seed == 0)
            TABLE.keep(run_dir, KEPT, False, "last")
            (KEPT / config["name"] / "files.json").write_text(json.dumps(numbers, indent=2) + "\n")
            print(f"[{i + 1}/{len(todo)}] {config['name']}: top-1 {summary['top1_last']:.2f}; "
                  + ", ".join(f"{k} {v['top1']:.2f}" for k, v in numbers.items())
                  + f" ({time.time() - started:.0f} s)", flush=True)
    command = "python benchmarks/fashion_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(planned, TABLE.machine(), command.strip())
    (KEPT / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
