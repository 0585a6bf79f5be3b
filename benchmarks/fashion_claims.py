"""The five systems' central claims, measured on Fashion-MNIST (issue 21), one `--claim` at a time.

Each claim runs its kdforge recipe on the standard table's data and schedule (benchmarks/fashion_table.py:
600 training images per class after a 5 % validation hold-out, the full test split, 10 epochs,
resnet20 teacher, resnet8 student unless the claim needs otherwise), 3 seeds, nothing selected on
the test split. Finished runs' summaries, configs and logs, and the teachers as slim checkpoints,
are copied to benchmarks/results/fashion-<claim>/ as they finish (also when the run is stopped), and
put back at the start, so a later session or a GPU machine continues the same runs.

    python benchmarks/fashion_claims.py --claim sftn     # SFTN: students of a student-friendly teacher

Claims not yet scripted here (PURSUhInT, DDNN + EKD, RTK, NetGraft) are listed in issue 21.
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


CLAIMS = {"sftn": claim_sftn}


def keep_finished(runs: Path, kept: Path, which: str) -> int:
    """Copy every finished run under `runs` (teachers with their slim checkpoint) into `kept`."""
    count = 0
    for summary in sorted(runs.glob("*/summary.json")):
        run_dir = summary.parent
        TABLE.keep(run_dir, kept, "teacher" in run_dir.name, which)
        count += 1
    for name in ("results.md", "results.json"):
        if (runs / name).is_file():
            shutil.copyfile(runs / name, kept / name)
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claim", choices=sorted(CLAIMS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=None, help="folder of the IDX files (default: Debian's package folder)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)

    from kdforge.recipes.runs import teacher_which

    runs = Path("runs") / f"fashion-{args.claim}"
    kept = HERE / "results" / f"fashion-{args.claim}"
    kept.mkdir(parents=True, exist_ok=True)
    base = TABLE.recipe(False, args.root)
    restored = TABLE.restore(kept, runs)
    if restored:
        print(f"restored {restored} finished run(s) from {kept}", flush=True)
    started = time.time()
    try:
        result = CLAIMS[args.claim](base, runs, args.seeds, args.progress)
    finally:
        kept_runs = keep_finished(runs, kept, teacher_which(base))
        print(f"kept {kept_runs} finished run(s) in {kept} ({(time.time() - started) / 60:.0f} min)", flush=True)
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
