"""Mutation check: each listed mutation of the product code must make its tests fail.

    python -m devtools.mutation            # every mutation in devtools/mutations.py (`make mutation`)
    python -m devtools.mutation --only kd-teacher-not-detached cosine-as-linear
    python -m devtools.mutation --list     # the mutations and the tests that must kill them, as Markdown

The tracked files are copied to a temporary folder once; each mutation edits the copy, runs its
tests there (the copy's `kdforge` first on the path) and puts the file back, so the working tree
is never touched. The tests are first run on the unmutated copy: a test that fails already
kills nothing. Exit status 1 when a mutation survives or a test fails unmutated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parents[1]


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if (root / line).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tracked_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_mutation(m: Mutation, root: Path) -> str:
    """The file's text; raises if the original snippet is not there exactly once."""
    path = root / m.file
    if not path.is_file():
        raise SystemExit(f"mutation {m.name}: {m.file} does not exist")
    text = path.read_text()
    count = text.count(m.original)
    if count != 1:
        raise SystemExit(f"mutation {m.name}: its original snippet occurs {count} times in {m.file} "
                         f"(must be exactly once): {m.original!r}")
    return text


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        lines = (done.stdout + done.stderr).strip().splitlines()
        errors = [line[1:].strip() for line in lines if line.startswith("E ")]
        rc, tail = done.returncode, lines[-1:] + errors[:1]  # the count, and why the first test failed
    except subprocess.TimeoutExpired:
        rc, tail = -1, ["timed out"]
    return rc, time.perf_counter() - start, " | ".join(tail)[:160]


def as_markdown(mutations: list[Mutation]) -> str:
    lines = ["| mutation | file | what changes | killed by |", "|---|---|---|---|"]
    for m in mutations:
        tests = "<br>".join(f"`{t}`" for t in m.tests)
        lines.append(f"| `{m.name}` | `{m.file}` | {m.why} | {tests} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.mutation", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="print the mutations as a Markdown table and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("devtools/mutations.py: two mutations share a name")
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"--only: unknown mutation(s) {unknown}; known: {', '.join(names)}")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        print(as_markdown(chosen))
        return 0
    for m in chosen:
        check_mutation(m, ROOT)
    with tempfile.TemporaryDirectory(prefix="kdforge-mutation-") as tmp:
        copy = Path(tmp)
        copy_tree(ROOT, copy)
        tests = sorted({t for m in chosen for t in m.tests})
        rc, seconds, tail = run_tests(copy, tests, args.timeout)
        print(f"unmutated: {len(tests)} test(s) {'pass' if rc == 0 else 'FAIL'} ({seconds:.0f} s) {tail}", flush=True)
        if rc != 0:
            print("the tests must pass on the unmutated code before a mutation can be judged")
            return 1
        survived = []
        for m in chosen:
            path = copy / m.file
            original = check_mutation(m, copy)
            path.write_text(original.replace(m.original, m.mutated))
            try:
                rc, seconds, tail = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
            killed = rc != 0
            if not killed:
                survived.append(m.name)
            print(f"{'killed  ' if killed else 'SURVIVED'} {m.name:40s} {seconds:5.0f} s  {tail}", flush=True)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations killed"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
