"""fp32 vs int8 ONNX students: file size, test top-1 and ONNX Runtime latency per image (issue 39).

For each run folder given: `kdforge export --format onnx` and `--format onnx --int8` (post-training static
quantisation, 256 calibration images of the training split), then each file's test top-1 run as deployed
(`kdforge eval FILE`) and its latency in ONNX Runtime on this CPU: median over `--repeats` timed calls after
warm-up, batch 1 and batch 64, one intra-op thread (a small device's budget) unless `--threads`.

    python benchmarks/int8_speed.py runs/quickstart/student-KD-seed0 [RUN ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def latency_ms(path: str, image_size: int, channels: int, batch: int, repeats: int, threads: int) -> float:
    from kdforge.deploy.latency import onnx_ms_per_image

    return onnx_ms_per_image(path, image_size, channels, batch, repeats, threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of trained students")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    from kdforge.deploy.evaluate_file import evaluate_file
    from kdforge.deploy.export import export_model

    print("| run | file | size (KB) | test top-1 | ms / image, batch 1 | ms / image, batch 64 |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        for int8 in (False, True):
            result = export_model(run, format="onnx", int8=int8)
            top1 = evaluate_file(result["path"])["top1"]
            size = result["image_size"]
            channels = json.loads(Path(result["metadata"]).read_text())["in_channels"]
            one = latency_ms(result["path"], size, channels, 1, args.repeats, args.threads)
            many = latency_ms(result["path"], size, channels, 64, max(5, args.repeats // 5), args.threads)
            kb = Path(result["path"]).stat().st_size / 1024
            print(f"| {run} | {'int8' if int8 else 'fp32'} | {kb:.0f} | {top1:.2f} | {one:.3f} | {many:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
