"""What a study's teacher store (`train.teacher_store`) saves: a study's logit-method runs, before and after.

The Fashion-MNIST recipe of `fashion_table.py` (600 images per class, random crop and flip, resnet8 student) with
the table's committed resnet20 teacher of seed 0 (`benchmarks/results/fashion/teacher-seed0/teacher.pt`). The
study is KD then DKD, seed 0, run twice: without a store (the teacher runs every step) and with one (`float32`,
so the comparison is exact): KD records the teacher's logits, DKD looks them up; then KD once more with the store
(looks up), whose weights must equal those of KD without the store bit for bit. Throughput is the engine's own
training images per second (`summary.json`'s train_img_per_s: the steps only, no evaluation).

    python benchmarks/teacher_store_speed.py              # 3 epochs per run; writes results/teacher-store/
    python benchmarks/teacher_store_speed.py --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fashion_table as TABLE  # noqa: E402

TEACHER = HERE / "results" / "fashion" / "teacher-seed0" / "teacher.pt"
STUDY = [("kd", "none"), ("dkd", "none"), ("kd", "record"), ("dkd", "look up"), ("kd", "look up")]


def run(base: dict, runs: Path, method: str, store: str, index: int) -> dict:
    from kdforge.config import config_from_dict
    from kdforge.engine import train_from_config
    from kdforge.methods.usual import usual_losses

    cfg = copy.deepcopy(base)
    epochs = cfg["schedule"]["epochs"]
    cfg.update(name=f"{index}-{method}-{store.replace(' ', '-')}", output_dir=str(runs), seed=0,
               losses=usual_losses(method, epochs), teacher={"model": TABLE.TEACHER, "checkpoint": str(TEACHER)})
    if store != "none":
        cfg["train"].update(teacher_store=str(runs / "store"), teacher_store_dtype="float32")
    return train_from_config(config_from_dict(cfg), overwrite=True)


def student_weights(run_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["student"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--runs", default="runs/teacher-store")
    args = p.parse_args(argv)
    if not TEACHER.is_file():
        p.error(f"{TEACHER} is missing: it is committed with the Fashion-MNIST table")
    base = TABLE.recipe(False, args.root)
    base["schedule"]["epochs"] = args.epochs
    base["train"].update(progress=False, tensorboard=False, eval_every=args.epochs)
    runs = Path(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    rows = []
    for i, (method, store) in enumerate(STUDY):
        summary = run(base, runs, method, store, i)
        rows.append({"method": method, "store": store, "img_per_s": summary["train_img_per_s"],
                     "train_s": summary["train_time_s"], "top1": summary["top1_last"],
                     "used": (summary.get("teacher_store") or {}).get("served_images", 0),
                     "run_dir": summary["run_dir"]})
        print(f"{method} ({store}): {summary['train_img_per_s']:.0f} img/s, top-1 {summary['top1_last']:.2f}",
              flush=True)
    plain = {r["method"]: r for r in rows if r["store"] == "none"}
    a, b = student_weights(plain["kd"]["run_dir"]), student_weights(rows[-1]["run_dir"])
    exact = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [f"Machine: {TABLE.machine()}. {args.epochs} epochs per run, seed 0; store dtype float32.", "",
             "| run | teacher | train img/s | train s | speed-up | test top-1 |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["img_per_s"] / plain[r["method"]]["img_per_s"]
        lines.append(f"| {r['method']} | {'runs every step' if r['store'] == 'none' else r['store']} | "
                     f"{r['img_per_s']:.0f} | {r['train_s']:.1f} | {ratio:.2f}x | {r['top1']:.2f} |")
    lines += ["", f"KD looking its teacher logits up equals KD without a store, weights bit for bit: "
                  f"{'yes' if exact else 'NO'}."]
    out = HERE / "results" / "teacher-store"
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    (out / "speed.json").write_text(json.dumps({"rows": rows, "exact": exact, "epochs": args.epochs,
                                                "machine": TABLE.machine()}, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
