"""Cost of one EKD step vs the separate steps of the networks it trains.

One EKD step trains the full net and every sub-net of a depth-dynamic network (`ddnn`).
Trained independently, the same networks cost one CE step each. Both run in the engine
(`Trainer._step`) on the same synthetic batches, interleaved round by round so that
machine noise hits both alike; the median ms/step of each is reported, and the ratio of
EKD to the sum of the separate steps (below 1: the shared stem and first-stage blocks,
which every sub-net takes from the full net, are computed once).

    python benchmarks/ekd_cost.py --full resnet56 --subnets resnet44 resnet32 resnet20 --bn switchable
    python benchmarks/ekd_cost.py --device cuda --batch 128 --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer
from kdforge.engine.precision import resolve_device
from kdforge.methods import Losses
from kdforge.models import build_model

from speed import synthetic_data, sync  # noqa: E402  (benchmarks/ is the script's folder)


def make_trainer(name: str, model: str, options: dict, losses: dict, args, data, tmp: str) -> Trainer:
    torch.manual_seed(0)
    student = build_model(model, num_classes=args.classes, **options)
    cfg = config_from_dict({
        "name": name, "output_dir": tmp, "data": {"batch_size": args.batch},
        "student": {"model": model, "options": options}, "losses": losses,
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": args.device, "precision": args.precision, "progress": False, "tensorboard": False},
    })
    trainer = Trainer(student, Losses.from_config(losses), data, None, config=cfg, run_dir=f"{tmp}/{name}")
    trainer.prepare()
    trainer.train_loader.set_epoch(0)
    return trainer


def timed_steps(trainer: Trainer, batches) -> list[float]:
    times = []
    for images, labels, indices in batches:
        sync(trainer.precision.device)
        start = time.perf_counter()
        trainer._step(images, labels, indices)
        sync(trainer.precision.device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", default="resnet56")
    parser.add_argument("--subnets", nargs="+", default=["resnet44", "resnet32", "resnet20"])
    parser.add_argument("--bn", nargs="+", default=["switchable"], choices=["shared", "switchable", "recalibrate"],
                        help="BatchNorm modes of the DDNN to time (each against the same separate steps)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network per round")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    data = synthetic_data(args.batch * (args.steps + args.warmup), args.classes)
    device = resolve_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {f"ekd ({bn} BN)": make_trainer(f"ekd-{bn}", "ddnn", {"full": args.full, "subnets": args.subnets,
                                                                         "bn": bn}, {"ekd": 1.0}, args, data, tmp)
                    for bn in args.bn}
        plain = {name: make_trainer(name, name, {}, {"ce": 1.0}, args, data, tmp) for name in [args.full, *args.subnets]}
        everything = {**trainers, **plain}
        batches = {name: list(t.train_loader) for name, t in everything.items()}
        times: dict[str, list[float]] = {name: [] for name in everything}
        for name, t in everything.items():
            timed_steps(t, batches[name][: args.warmup])
        for _ in range(args.rounds):
            for name, t in everything.items():
                times[name] += timed_steps(t, batches[name][args.warmup:])
        precision = next(iter(everything.values())).precision.name
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    separate = sum(ms[name] for name in plain)
    print(f"{args.full} holding {', '.join(args.subnets)}; batch {args.batch}, {args.classes} classes, 32x32, "
          f"{label}, {precision}, torch {torch.__version__}; median of {args.rounds} x {args.steps} steps")
    print(f"{'training step':<28} {'ms/step':>9} {'vs separate sum':>16}")
    for name in plain:
        print(f"{name + ' alone (CE)':<28} {ms[name]:>9.1f}")
    print(f"{'sum of the separate steps':<28} {separate:>9.1f} {1.0:>16.2f}")
    for name in trainers:
        print(f"{name:<28} {ms[name]:>9.1f} {ms[name] / separate:>16.2f}")


if __name__ == "__main__":
    main()
