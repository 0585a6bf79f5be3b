"""Throughput of the streaming loader (`data/streaming/`) per worker count, against a training step it feeds.

Writes `--images` generated JPEGs the size of ImageNet's (random sides 300-500 px, quality 90) into an
ILSVRC-style tree, then measures, in the same process:

* loader: images/s of `StreamingLoader` (RandomResizedCrop 224 + flip, batch `--batch`) over one epoch per
  worker count (after one warm-up batch, workers started as in training);
* step: images/s of resnet18_imagenet training steps (SGD, CE) on a batch already on the device, in fp32 and
  in bf16 + channels-last;
* fed: images/s of the faster of those steps fed by the loader, per worker count (decoding in workers
  overlaps the steps; with 0 workers it runs between them);

"fed / step alone" near 1 means the loader is not the bottleneck at that worker count. On a GPU the step is ~100x faster
than here, so read the loader column as images/s per worker count; the GPU machine's numbers are in RESULTS.md
where measured.

    python benchmarks/streaming.py                          # 1024 images, workers 0 1 2, batch 32
    python benchmarks/streaming.py --workers 0 2 4 8 --images 2048 --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def write_jpegs(root: Path, n: int, classes: int = 8, seed: int = 0) -> Path:
    """`n` JPEGs in root/train/<class>/ (reused when already there)."""
    from PIL import Image

    done = root / f".complete-{n}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = i % classes
        folder = root / "train" / f"n{k:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        # smooth colour fields plus noise: JPEG sizes like photographs' (~100-200 kB at these sides)
        x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        base = np.stack([128 + 100 * np.sin(6 * x + c + k) * np.cos(4 * y - c) for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", quality=90)
    (root / "val").mkdir(exist_ok=True)
    for folder in sorted((root / "train").iterdir()):
        (root / "val" / folder.name).mkdir(exist_ok=True)
    done.touch()
    return root


def loader_rate(data, workers: int, batch: int) -> float:
    from kdforge.data.streaming import StreamingLoader

    loader = StreamingLoader(data, batch, shuffle=True, drop_last=True, device="cpu", seed=0, workers=workers)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # workers started, first batch decoded
    start, n = time.perf_counter(), 0
    for images, _ in it:
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def training_step(precision: str, device: str):
    """`step(x, y)`: one SGD step of resnet18_imagenet (1000 classes, CE) at `precision`; and its memory format."""
    from kdforge.engine.precision import resolve_precision
    from kdforge.models import build_model

    dev = torch.device(device)
    prec = resolve_precision(precision, None if precision == "fp32" else True, dev)
    torch.manual_seed(0)
    model = build_model("resnet18_imagenet", num_classes=1000).to(dev, memory_format=prec.memory_format())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        with prec.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y % 1000)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, prec.memory_format()


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_rate(precision: str, batch: int, steps: int, device: str) -> float:
    step, fmt = training_step(precision, device)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    step(x, y)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def fed_rate(data, workers: int, batch: int, precision: str, device: str, batches: int) -> float:
    """images/s of training steps fed by the loader (decoding overlaps the steps when workers > 0)."""
    from kdforge.data.streaming import StreamingLoader

    step, fmt = training_step(precision, device)
    loader = StreamingLoader(data, batch, shuffle=True, drop_last=True, device=device, seed=1, workers=workers,
                             channels_last=fmt == torch.channels_last)
    loader.set_epoch(0)
    it = iter(loader)
    step(*next(it))  # warm-up: workers started, first step done
    sync(device)
    start, n = time.perf_counter(), 0
    for _, (x, y) in zip(range(batches), it):
        step(x, y)
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="training steps timed per precision on a fixed batch")
    p.add_argument("--fed-batches", type=int, default=12, help="training steps timed when fed by the loader")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default="/tmp/kdforge-streaming-bench")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    from kdforge.config import config_from_dict
    from kdforge.data.streaming import open_streaming_split

    root = write_jpegs(Path(args.root), args.images)
    d = config_from_dict({"data": {"name": "imagenet", "root": str(root), "streaming": True}}).data
    data = open_streaming_split(d, "train", train=True)
    steps = {prec: step_rate(prec, args.batch, args.steps, args.device) for prec in ("fp32", "bf16")}
    fastest = max(steps, key=steps.get)
    rows = []
    for workers in args.workers:
        rate = loader_rate(data, workers, args.batch)
        fed = fed_rate(data, workers, args.batch, fastest, args.device, args.fed_batches)
        rows.append({"workers": workers, "loader_img_per_s": round(rate, 1), "fed_step_img_per_s": round(fed, 1),
                     "fed_vs_step": round(fed / steps[fastest], 3)})
    result = {"cpu": cpu_name(), "cores": torch.get_num_threads(), "device": args.device, "images": len(data),
              "batch": args.batch, "step_img_per_s": {k: round(v, 1) for k, v in steps.items()}, "loader": rows,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"{result['cpu']}, torch {torch.__version__}; {len(data)} JPEGs of 300-500 px -> 224 crops, batch "
          f"{args.batch}")
    print(f"resnet18_imagenet training step: fp32 {steps['fp32']:.1f} img/s, bf16+channels-last "
          f"{steps['bf16']:.1f} img/s")
    print(f"| workers | loader alone, img/s | {fastest} steps fed by the loader, img/s | fed / step alone |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['loader_img_per_s']:.1f} | {row['fed_step_img_per_s']:.1f} | "
              f"{row['fed_vs_step']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
