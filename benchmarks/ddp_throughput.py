"""Data-parallel throughput: `kdforge train --nproc N` vs one process, same global batch.

KD resnet32x4 -> resnet8x4 (losses ce 0.1 + kd 0.9), global batch 64, on random 32x32 RGB
images written in the official CIFAR-10 format (throughput does not depend on the pixels;
this machine has no CIFAR download). The teacher is a freshly initialised resnet32x4 saved by a
1-step run. Each configuration trains `--steps` steps; the number reported is the run's own
`train_img_per_s` (training steps only: no evaluation, no saving), over all processes.

    python benchmarks/ddp_throughput.py --nproc 1 2             # CPU: gloo, cores shared out
    python benchmarks/ddp_throughput.py --nproc 1 2 4 8 --device cuda   # one process per GPU

On CPU, N processes get OMP_NUM_THREADS = cores / N each, so every configuration uses the
same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_random_cifar10(root: Path, train_images: int, seed: int = 0) -> None:
    """A cifar-10-batches-py folder of random images (5 training batches, a test batch, the meta file)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = -(-train_images // 5)
    for name, n in [*((f"data_batch_{k}", per_batch) for k in range(1, 6)), ("test_batch", 100)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def kdforge(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-m", "kdforge", "train", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"kdforge train {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (alternating)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_random_cifar10(tmp / "data", train_images=args.batch * args.steps)
        common = [f"--set=output_dir={tmp}/runs", "--set=data.name=cifar10", f"--set=data.root={tmp}/data",
                  f"--set=train.device={args.device}",
                  "--set=train.tensorboard=false", "--set=train.progress=false", "--set=schedule.epochs=1"]
        kdforge([*common, "--set=name=teacher", "--set=student.model=resnet32x4", "--set=train.max_steps=1"],
                {**os.environ, "OMP_NUM_THREADS": str(cores)})
        results: dict[int, list[float]] = {n: [] for n in args.nproc}
        for repeat in range(args.repeats):
            for n in args.nproc:
                env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
                summary = kdforge([*common, f"--nproc={n}", f"--set=name=n{n}-{repeat}",
                                   "--set=student.model=resnet8x4", f"--set=teacher.checkpoint={tmp}/runs/teacher",
                                   "--set=losses.ce=0.1", "--set=losses.kd=0.9", f"--set=data.batch_size={args.batch}",
                                   f"--set=train.max_steps={args.steps}", f"--set=train.precision={args.precision}",
                                   "--set=train.log_every=1000"], env)
                results[n].append(summary["train_img_per_s"])
                precision = summary["precision"]
    base = max(results[args.nproc[0]])
    print(f"KD resnet32x4 -> resnet8x4, 32x32 RGB, global batch {args.batch}, {args.steps} steps, "
          f"{args.device} {precision}, {cores} cores; img/s = best of {args.repeats}\n")
    print("| processes | threads each | img/s (all runs) | best | vs first |")
    print("|---|---|---|---|---|")
    for n in args.nproc:
        runs = ", ".join(f"{v:.0f}" for v in results[n])
        threads = max(1, cores // n) if args.device == "cpu" else "-"
        print(f"| {n} | {threads} | {runs} | {max(results[n]):.0f} | {max(results[n]) / base:.2f}x |")


if __name__ == "__main__":
    main()
