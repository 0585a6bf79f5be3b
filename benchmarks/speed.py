"""Throughput of a KD training step in the engine vs the floor, in the same process.

The floor is the least a KD step can cost: a hand-written loop doing only the teacher
forward (no grad) and the student's forward, CE + KD loss, backward and SGD step, on
batches already on the device. The engine is measured twice on the same batches:
`step` is `Trainer._step` (taps, method composition, scaler, scheduler) and `epoch` is
the full training loop including the loader's batched augmentation and logging.
Variants are interleaved over several rounds and the median is reported.

    python benchmarks/speed.py                      # resnet32x4 -> resnet8x4, fp32 and bf16+channels-last
    python benchmarks/speed.py --device cuda --batch 256 --steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from kdforge.config import config_from_dict
from kdforge.data import ImageTensorDataset
from kdforge.engine import Trainer
from kdforge.engine.logger import RunLogger
from kdforge.engine.precision import resolve_device, resolve_precision
from kdforge.methods import Losses
from kdforge.methods.kd import kd_loss
from kdforge.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_data(n: int, classes: int) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageTensorDataset(images, labels, [str(i) for i in range(classes)],
                              (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name="synthetic")


def make_trainer(args, precision_name: str, data: ImageTensorDataset, tmp: str) -> Trainer:
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=args.classes)
    teacher = build_model(args.teacher, num_classes=args.classes)
    cfg = config_from_dict({
        "name": f"speed-{precision_name}", "output_dir": tmp,
        "data": {"batch_size": args.batch},
        "losses": {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}},
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": args.device, "precision": precision_name, "progress": False,
                  "tensorboard": False, "log_every": args.log_every, "compile": args.compile},
    })
    trainer = Trainer(student, Losses.from_config(cfg.losses), data, None, teacher=teacher, config=cfg,
                      run_dir=f"{tmp}/speed-{precision_name}")
    trainer.prepare()
    return trainer


def floor_run(trainer: Trainer, batches) -> float:
    """Seconds for the minimal KD loop on `batches` with the trainer's models and precision."""
    student, teacher, precision = trainer.student, trainer.teacher, trainer.precision
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sync(precision.device)
    start = time.perf_counter()
    for images, labels in batches:
        with precision.autocast():
            with torch.no_grad():
                t_logits = teacher(images)
            s_logits = student(images)
            loss = 0.1 * F.cross_entropy(s_logits.float(), labels) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(precision.device)
    return time.perf_counter() - start


def step_run(trainer: Trainer, batches) -> float:
    sync(trainer.precision.device)
    start = time.perf_counter()
    for images, labels in batches:
        trainer._step(images, labels)
    sync(trainer.precision.device)
    return time.perf_counter() - start


def epoch_run(trainer: Trainer, logger: RunLogger) -> float:
    class NoBar:
        def update(self, n): pass
        def set_postfix_str(self, *a, **k): pass

    trainer.state.batch_in_epoch = 0  # a whole epoch each time
    trainer.logger, trainer.bar = logger, NoBar()  # what fit() sets before its epochs
    sync(trainer.precision.device)
    start = time.perf_counter()
    trainer._train_epoch()
    sync(trainer.precision.device)
    return time.perf_counter() - start


def measure(args, precision_name: str, tmp: str) -> dict:
    n = args.batch * args.steps
    data = synthetic_data(n, args.classes)
    trainer = make_trainer(args, precision_name, data, tmp)
    loader = trainer.train_loader
    loader.set_epoch(0)
    batches = [(x.clone(), y.clone()) for x, y, _ in loader]  # same augmented batches for floor and step
    logger = RunLogger(trainer.run_dir, tensorboard=False, enabled=False)
    for _ in range(args.warmup):
        floor_run(trainer, batches[:3])
        step_run(trainer, batches[:3])
    runs = {"floor": lambda: floor_run(trainer, batches), "step": lambda: step_run(trainer, batches),
            "epoch": lambda: epoch_run(trainer, logger)}
    times = {k: [] for k in runs}
    for i in range(args.rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # no variant always runs first
        for name in order:
            times[name].append(runs[name]())
    images = len(batches) * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    # ratios per round (each variant against the floor of the same round), then the median
    step_ratio = statistics.median(s / f for s, f in zip(times["step"], times["floor"]))
    epoch_ratio = statistics.median(e / f for e, f in zip(times["epoch"], times["floor"]))
    return {
        "precision": trainer.precision.name, "channels_last": trainer.precision.channels_last,
        "floor_img_s": images / med["floor"], "step_img_s": images / med["step"],
        "epoch_img_s": images / med["epoch"], "step_ratio": step_ratio, "epoch_ratio": epoch_ratio,
        "times_s": times,
    }


def pair_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with the arguments every benchmark here shares: the model pair and the batch."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    return parser


def main() -> None:
    parser = pair_arguments(__doc__)
    parser.add_argument("--steps", type=int, default=12, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import tempfile

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'precision':<10} {'ch-last':<8} {'floor img/s':>12} {'step img/s':>11} {'epoch img/s':>12} "
          f"{'step/floor':>11} {'epoch/floor':>12}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision_name in args.precisions:
            resolve_precision(precision_name, None, device)  # fail early on an impossible precision
            r = measure(args, precision_name, tmp)
            results.append(r)
            print(f"{r['precision']:<10} {str(r['channels_last']):<8} {r['floor_img_s']:>12.1f} "
                  f"{r['step_img_s']:>11.1f} {r['epoch_img_s']:>12.1f} {r['step_ratio']:>11.3f} "
                  f"{r['epoch_ratio']:>12.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "device": name, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
