"""What `train.teacher_cache` saves: seconds per epoch of a few-shot KD run with and without it.

Built-in digits, few-shot training set (`data.few_shot: {shots: 10, seed: 0, holdout: 0}`: 100
label-free images), losses `{kd: 1}`, augmentation off, a freshly initialised resnet56 teacher
(speed does not depend on its accuracy) and a resnet8 student. Three variants:

- **no cache**: the engine's training loop, teacher forward every step;
- **teacher cache**: the same loop with `train.teacher_cache: true` (the teacher ran once, in
  `prepare`; every step looks its logits up);
- **student only**: a bare loop on the same batches doing only the student's forward, the KD
  loss against precomputed teacher logits, backward and SGD step (the target for the cache).

The two engine runs advance one epoch at a time, alternately (`fit(until_epoch=k)`, order
swapped every epoch), with a student-only epoch in each round, so machine noise hits all
alike. An epoch's time is its training time as the engine records it (no evaluation: the
runs have no eval set). The first epoch is reported apart (warm-up); the table gives the
mean ± sd of epochs 2..N.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/teacher_cache.py --threads 2
    python benchmarks/teacher_cache.py --device cuda --epochs 30

On a CPU shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps OpenMP's spinning threads from
making every kernel wait for a busy core (2 threads on 2 shared cores ran ~30x slower without it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer, load_datasets
from kdforge.engine.precision import resolve_device
from kdforge.methods import Losses
from kdforge.methods.kd import kd_loss
from kdforge.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(args, cache: bool, tmp: str) -> Trainer:
    cfg = config_from_dict({
        "name": f"cache-{cache}", "seed": 0, "output_dir": tmp,
        "data": {"name": "digits", "batch_size": args.batch, "augment": {"crop_padding": 0, "hflip": False},
                 "few_shot": {"shots": args.shots, "seed": 0, "holdout": 0}},
        "teacher": {"model": args.teacher}, "student": {"model": args.student},
        "losses": {"kd": 1.0}, "optim": {"lr": 0.05}, "schedule": {"name": "constant", "epochs": args.epochs},
        "train": {"device": args.device, "precision": args.precision, "progress": False, "tensorboard": False,
                  "log_every": 10_000, "teacher_cache": cache},
    })
    train, _ = load_datasets(cfg)
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=train.num_classes, in_channels=train.in_channels)
    teacher = build_model(args.teacher, num_classes=train.num_classes, in_channels=train.in_channels)
    return Trainer(student, Losses.from_config(cfg.losses), train, None, teacher=teacher, config=cfg,
                   run_dir=f"{tmp}/{cfg.name}")


def student_only_epoch(student, optimizer, batches, precision) -> float:
    """Seconds for one epoch of the bare student step on `batches` of (images, teacher logits)."""
    sync(precision.device)
    start = time.perf_counter()
    for images, t_logits in batches:
        with precision.autocast():
            loss = kd_loss(student(images), t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(precision.device)
    return time.perf_counter() - start


def epoch_seconds(trainer: Trainer) -> list[float]:
    """Training seconds of every finished epoch, as the engine measured them."""
    images = len(trainer.train_loader) * trainer.cfg.data.batch_size
    return [images / r["train_img_per_s"] for r in trainer.state.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        plain, cached = make_trainer(args, False, tmp), make_trainer(args, True, tmp)
        plain.prepare()
        start = time.perf_counter()
        cached.prepare()
        prepare_s = time.perf_counter() - start
        cache = cached.teacher_cache
        precision = cached.precision

        # the student-only reference: a copy of the student, the cached teacher logits, the run's batches
        student = copy.deepcopy(cached.student).train()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loader = cached.train_loader
        floor = []
        for epoch in range(1, args.epochs + 1):
            runs = [plain, cached] if epoch % 2 else [cached, plain]
            for trainer in runs:
                trainer.fit(until_epoch=epoch)
            loader.set_epoch(epoch)
            batches = [(x, cache.lookup(i)[0]) for x, _, i in loader]
            floor.append(student_only_epoch(student, optimizer, batches, precision))
        times = {"no cache (teacher forward every step)": epoch_seconds(plain),
                 "teacher cache": epoch_seconds(cached), "student only (bare loop)": floor}

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    steps = len(loader)
    print(f"{args.teacher} -> {args.student}, digits few-shot {args.shots}/class ({len(cached.train_data)} images), "
          f"batch {args.batch} ({steps} steps/epoch), {args.epochs} epochs, {device_name} "
          f"({precision.name}{', channels-last' if precision.channels_last else ''}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"cache built in prepare: {cache.describe()} (prepare {prepare_s:.2f} s in all)\n")
    ref = statistics.mean(floor[1:])
    print(f"| variant | epoch 1 s | s / epoch, epochs 2–{args.epochs} (mean ± sd) | median | img/s "
          f"| vs student only |")
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        rest = t[1:]
        mean, sd = statistics.mean(rest), statistics.stdev(rest) if len(rest) > 1 else 0.0
        images = steps * args.batch
        print(f"| {name} | {t[0]:.3f} | {mean:.3f} ± {sd:.3f} | {statistics.median(rest):.3f} | "
              f"{images / mean:.0f} | {mean / ref:.2f}x |")


if __name__ == "__main__":
    main()
