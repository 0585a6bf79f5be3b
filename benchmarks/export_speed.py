"""Inference speed of an exported student: PyTorch eager vs TorchScript vs ONNX Runtime, on the CPU.

For each model (random weights: speed does not depend on them) the script writes the TorchScript
and ONNX files with the same writers `kdforge export` uses, checks their logits against eager
PyTorch (the export tolerance, 1e-4 relative), and times forward passes of random images at
batch 1 (latency) and batch 64 (throughput), fp32, in one process with `--threads` threads.
Runtimes are timed round by round, alternately, so machine noise hits all alike; the table gives
the median of the rounds.

    python benchmarks/export_speed.py --models resnet8 resnet8x4 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdforge.deploy.formats import as_runner, load_runner, write_onnx, write_torchscript
from kdforge.models import build_model
from kdforge.models.complexity import count_macs, format_macs

TOLERANCE = 1e-4


def runners(name: str, size: int, classes: int, folder: Path) -> dict:
    """{runtime: function batch -> logits} for eager PyTorch, TorchScript and ONNX Runtime."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes).eval()
    example = torch.randn(2, 3, size, size)
    write_torchscript(model, example, folder / f"{name}.torchscript.pt", "{}")
    write_onnx(model, example, folder / f"{name}.onnx")
    return {"pytorch eager": as_runner(model),
            "torchscript": load_runner(folder / f"{name}.torchscript.pt", "torchscript")[0],
            "onnxruntime": load_runner(folder / f"{name}.onnx", "onnx")[0]}


def check(run: dict, size: int) -> float:
    """Largest |logit difference| of any runtime from eager PyTorch, relative to the largest logit."""
    x = torch.randn(5, 3, size, size)
    want = run["pytorch eager"](x)
    scale = max(1.0, want.abs().max().item())
    errors = {name: (fn(x) - want).abs().max().item() / scale for name, fn in run.items()}
    errors = {name: e if e == e else float("inf") for name, e in errors.items()}  # a NaN is the worst
    name, worst = max(errors.items(), key=lambda item: item[1])
    if worst > TOLERANCE:
        raise SystemExit(f"the {name} export differs from PyTorch by {worst:.3g} (relative; tolerance "
                         f"{TOLERANCE:g}): not timed")
    return worst


def time_rounds(run: dict, size: int, batch: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median images/s of each runtime over `rounds` alternating rounds of about `seconds` each."""
    x = torch.randn(batch, 3, size, size)
    for fn in run.values():  # warm-up (allocations, ONNX Runtime's first-run optimisations)
        for _ in range(3):
            fn(x)
    rates: dict[str, list[float]] = {key: [] for key in run}
    for r in range(rounds):
        for key in (list(run) if r % 2 == 0 else list(run)[::-1]):
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                run[key](x)
                n += 1
            rates[key].append(n * batch / elapsed)
    return {key: statistics.median(v) for key, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet8x4"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timing round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| model | MACs | batch | {' | '.join(['pytorch eager', 'torchscript', 'onnxruntime'])} "
          f"| max rel. difference |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run = runners(name, args.size, args.classes, Path(tmp))
            macs = format_macs(count_macs(build_model(name, num_classes=args.classes), args.size))
            worst = check(run, args.size)
            for batch in args.batches:
                rates = time_rounds(run, args.size, batch, args.rounds, args.seconds)
                cells = " | ".join(f"{rates[key]:,.0f} img/s" for key in run)
                print(f"| {name} | {macs} | {batch} | {cells} | {worst:.1e} |", flush=True)


if __name__ == "__main__":
    main()
