"""Time and peak memory of a PURSUhInT hint selection: resnet110 teacher (54 block outputs), N probe images.

The probe set is N random 32x32 RGB images (CIFAR-sized; no CIFAR files needed) and the
teacher is freshly initialised: cost depends on shapes, not on what the weights learnt.
Each metric runs in a fresh process so that its peak memory (max RSS) is its own.

    python benchmarks/hint_selection.py                 # N = 10000, all metrics, this machine
    python benchmarks/hint_selection.py --n 2000 --metrics cca
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def one(metric: str, n: int, model: str, device: str, batch_size: int) -> dict:
    from kdforge.data.tensor_dataset import ImageTensorDataset
    from kdforge.hints import select_hints
    from kdforge.models import build_model

    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.randint(0, 100, (n,)), classes=[str(i) for i in range(100)],
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="random32")
    teacher = build_model(model, num_classes=100).to(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    selection = select_hints(teacher, data, k=3, metric=metric, probe=n, batch_size=batch_size, device=device)
    wall = time.perf_counter() - start
    return {"metric": metric, "n": n, "layers": len(selection.layers), "hints": selection.hints,
            "seconds": selection.seconds, "wall_s": round(wall, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_mib": round(rss_before),
            "pooled_mib": round(n * sum(selection.channels) * 4 / 2**20, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--metrics", nargs="+", default=["cca", "cka_linear", "cka_rbf", "combined"])
    p.add_argument("--model", default="resnet110")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args.metrics[0], args.n, args.model, args.device, args.batch_size)))
        return
    print(f"# {args.model}, N={args.n}, device {args.device}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| metric | layers | probe pass s | distances s | clustering s | total s | peak RSS MiB | pooled features MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for metric in args.metrics:
        out = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n), "--metrics", metric,
                              "--model", args.model, "--device", args.device, "--batch-size", str(args.batch_size)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        s = r["seconds"]
        print(f"| {metric} | {r['layers']} | {s['probe']:.1f} | {s['distances']:.1f} | {s['clustering']:.2f} | "
              f"{r['wall_s']:.1f} | {r['peak_rss_mib']} | {r['pooled_mib']} |", flush=True)


if __name__ == "__main__":
    main()
