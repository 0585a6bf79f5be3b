"""Copy what a finished benchmark leaves worth committing into benchmarks/results/<NAME>/.

Per run folder: summary.json, config.yaml and log.jsonl (small text files); per benchmark folder:
results.md / results.json and the report's report.md. Checkpoints are not copied (too large to
commit; a table's teachers are kept as slim exports where later rows need them).

    python benchmarks/keep_results.py runs/bench/sftn-digits-mean digits/sftn-mean
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

RUN_FILES = ("summary.json", "config.yaml", "log.jsonl")
TOP_FILES = ("results.md", "results.json", "report/report.md", "student.pt.json")


def keep(source: Path, dest: Path) -> int:
    """Copy the files above from `source` (recursively) to `dest`; returns how many were copied."""
    count = 0
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and (path.name in RUN_FILES or str(relative) in TOP_FILES or path.name in TOP_FILES):
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="a benchmark's output folder (e.g. runs/bench/sftn-digits-mean)")
    p.add_argument("name", help="its folder under benchmarks/results/")
    args = p.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"keep_results: {args.source} is not a folder")
    dest = Path(__file__).resolve().parent / "results" / args.name
    print(f"{keep(args.source, dest)} files -> {dest}")


if __name__ == "__main__":
    main()
